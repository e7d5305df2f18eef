//! What the child does between fork and exec. Only async-signal-safe
//! calls here (the parent may have had other threads holding locks when
//! it forked): no allocation, only system calls on values made before.

use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::process::CommandExt;

use crate::Prepared;

pub(crate) fn install(cmd: &mut std::process::Command, p: Prepared) {
    // SAFETY: `apply` makes only async-signal-safe system calls on
    // descriptors and numbers prepared before the fork, and allocates
    // nothing.
    #[allow(unsafe_code)]
    unsafe {
        cmd.pre_exec(move || apply(&p));
    }
}

pub(crate) fn kill_user(uid: u32) {
    let mut cmd = std::process::Command::new("/bin/true");
    cmd.uid(uid).gid(uid);
    // SAFETY: after std's setuid, one system call on integers.
    #[allow(unsafe_code)]
    unsafe {
        cmd.pre_exec(|| {
            // Every process the user may signal but this one.
            libc::kill(-1, libc::SIGKILL);
            Ok(())
        });
    }
    let _ = cmd.status();
}

fn apply(p: &Prepared) -> std::io::Result<()> {
    // A session of its own: no controlling terminal to inject keystrokes
    // into, and a process group of its own (led by it) to be stopped by.
    rustix::process::setsid()?;
    join(&p.procs);
    // Files the service makes are its own to share: the usual mask, not
    // tandem's owner-only one.
    rustix::process::umask(rustix::fs::Mode::from_raw_mode(0o022));
    if let Some(n) = p.nofile {
        setrlimit(rustix::process::Resource::Nofile, n)?;
    }
    // No file larger than its disk allowance.
    if let Some(n) = p.fsize {
        setrlimit(rustix::process::Resource::Fsize, n)?;
    }
    if let Some((tmp, over)) = &p.private_tmp
        && over.iter().any(|o| *o)
    {
        private_tmp(tmp, *over)?;
    }
    // No core files of a service's memory (its secrets) in its release.
    setrlimit(rustix::process::Resource::Core, 0)?;
    if let Some(uid) = p.user {
        drop_to(uid)?;
    }
    // Nothing it runs gains privileges (setuid binaries, file caps).
    check(
        // SAFETY: prctl with integer arguments.
        #[allow(unsafe_code)]
        unsafe {
            libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0)
        },
    )?;
    if let Some(fd) = &p.ruleset {
        check(
            // SAFETY: the ruleset descriptor is open; flags 0.
            #[allow(unsafe_code)]
            unsafe {
                libc::syscall(libc::SYS_landlock_restrict_self, fd.as_raw_fd(), 0) as libc::c_int
            },
        )?;
    }
    Ok(())
}

/// A mount namespace of its own in which `tmp` is `/tmp` and `/var/tmp`
/// (those `over` says):
/// nothing it mounts goes back out (private propagation). Before the user
/// switch (it needs root) and the fence (which forbids mounting).
fn private_tmp(tmp: &std::ffi::CStr, over: [bool; 2]) -> std::io::Result<()> {
    // SAFETY: system calls on C strings made before the fork.
    #[allow(unsafe_code)]
    unsafe {
        check(libc::unshare(libc::CLONE_NEWNS))?;
        check(libc::mount(
            std::ptr::null(),
            c"/".as_ptr(),
            std::ptr::null(),
            libc::MS_REC | libc::MS_PRIVATE,
            std::ptr::null(),
        ))?;
        for (target, over) in [c"/tmp", c"/var/tmp"].into_iter().zip(over) {
            if !over {
                continue;
            }
            let ret = libc::mount(
                tmp.as_ptr(),
                target.as_ptr(),
                std::ptr::null(),
                libc::MS_BIND | libc::MS_REC,
                std::ptr::null(),
            );
            // A system without /var/tmp: /tmp alone.
            if ret == -1 && target != c"/var/tmp" {
                return Err(std::io::Error::last_os_error());
            }
        }
    }
    Ok(())
}

/// Writes our pid into each group's `cgroup.procs`. A group removed since
/// it was made (by hand): the process runs unlimited rather than not at all.
fn join(procs: &[OwnedFd]) {
    let pid = rustix::process::getpid().as_raw_nonzero().get() as u32;
    // The pid in decimal, without allocating.
    let mut buf = [0u8; 12];
    let mut at = buf.len();
    let mut n = pid;
    loop {
        at -= 1;
        buf[at] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    for fd in procs {
        let _ = rustix::io::write(fd, &buf[at..]);
    }
}

fn setrlimit(resource: rustix::process::Resource, n: u64) -> std::io::Result<()> {
    rustix::process::setrlimit(
        resource,
        rustix::process::Rlimit {
            current: Some(n),
            maximum: Some(n),
        },
    )?;
    Ok(())
}

/// Becomes `uid` (and group `uid`), with no supplementary groups: all
/// three ids of each, so there is no way back.
fn drop_to(uid: u32) -> std::io::Result<()> {
    // SAFETY: plain system calls on integers (the set*id wrappers of libc
    // are what std's own `Command::uid` uses in the child).
    #[allow(unsafe_code)]
    unsafe {
        check(libc::setgroups(0, std::ptr::null()))?;
        check(libc::setresgid(uid, uid, uid))?;
        check(libc::setresuid(uid, uid, uid))?;
    }
    Ok(())
}

fn check(ret: libc::c_int) -> std::io::Result<()> {
    if ret == -1 {
        Err(std::io::Error::last_os_error())
    } else {
        Ok(())
    }
}
