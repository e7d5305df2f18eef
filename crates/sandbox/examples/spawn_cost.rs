//! What confining a process costs at its start: `/bin/true` started and
//! waited for ROUNDS times plainly and through the sandbox (control
//! groups made and joined, rlimits, a user of its own, no_new_privs, a
//! Landlock ruleset), interleaved, with the same environment. Prints
//! microseconds per start (mean, median, p99) and the ratio. Run as root
//! for the whole sandbox (`bench/isolation` does).

use std::time::Instant;

use tandem_core::protocol::Limits;

fn main() {
    let rounds: usize = std::env::var("ROUNDS")
        .ok()
        .and_then(|r| r.parse().ok())
        .unwrap_or(300);
    let data = tempfile::tempdir().expect("tempdir");
    let sandbox = tandem_sandbox::Sandbox::detect(data.path(), "bench");
    for p in sandbox.protections() {
        println!(
            "{:<7} {}: {}",
            p.name,
            if p.on { "on " } else { "OFF" },
            p.detail
        );
    }
    let limits = Limits {
        memory_bytes: Some(1 << 30),
        cpu_millis: None,
        pids: Some(512),
        nofile: Some(4096),
        disk_bytes: Some(1 << 30),
    };
    let release = data.path().join("release");
    std::fs::create_dir_all(&release).expect("release");
    let tmp = data.path().join("tmp");
    let user = sandbox
        .users()
        .then_some(tandem_core::protocol::FIRST_SERVICE_UID + 999_999);
    tandem_sandbox::paths::own_dir(&tmp, user).expect("tmp");
    let (mut plain, mut confined) = (Vec::new(), Vec::new());
    for i in 0..rounds * 2 {
        let mut cmd = std::process::Command::new("/bin/true");
        cmd.current_dir(&release);
        let started = Instant::now();
        if i % 2 == 1 {
            let group = format!("bench-{i}");
            let prepared = sandbox
                .prepare(&tandem_sandbox::Confinement {
                    group: &group,
                    user,
                    limits: &limits,
                    read: std::slice::from_ref(&release),
                    write: std::slice::from_ref(&tmp),
                    private_tmp: Some(&tmp),
                })
                .expect("prepare");
            prepared.install(&mut cmd);
            let status = cmd.status().expect("spawn");
            assert!(status.success(), "confined /bin/true: {status}");
            confined.push(started.elapsed().as_secs_f64() * 1e6);
            sandbox.remove(&group);
        } else {
            let status = cmd.status().expect("spawn");
            assert!(status.success());
            plain.push(started.elapsed().as_secs_f64() * 1e6);
        }
    }
    let stats = |v: &mut Vec<f64>| {
        v.sort_by(f64::total_cmp);
        let mean = v.iter().sum::<f64>() / v.len() as f64;
        (mean, v[v.len() / 2], v[v.len() * 99 / 100])
    };
    let (pm, p50, p99) = stats(&mut plain);
    let (cm, c50, c99) = stats(&mut confined);
    println!("starts: {rounds} each, interleaved; µs per start (incl. wait for exit)");
    println!("plain     mean {pm:8.0}  p50 {p50:8.0}  p99 {p99:8.0}");
    println!("confined  mean {cm:8.0}  p50 {c50:8.0}  p99 {c99:8.0}");
    println!(
        "confined/plain: mean {:.2}x, +{:.0} µs per start",
        cm / pm,
        cm - pm
    );
}
