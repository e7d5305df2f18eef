//! Where an instance listens, from `/proc`: what a readiness failure says
//! when the app is up but not where tandem looks for it (another port
//! than `PORT`, or an address 127.0.0.1 does not reach, such as `[::1]`).

use std::collections::HashSet;
use std::fs;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

/// The TCP sockets listening in process group `pgid` (an instance and
/// whatever it started), sorted. Best effort: processes and sockets that
/// come and go while it reads are skipped.
pub fn listening(pgid: u32) -> Vec<SocketAddr> {
    let inodes = socket_inodes(pgid);
    if inodes.is_empty() {
        return Vec::new();
    }
    let mut found: Vec<SocketAddr> = ["/proc/net/tcp", "/proc/net/tcp6"]
        .iter()
        .filter_map(|table| fs::read_to_string(table).ok())
        .flat_map(|text| listeners(&text))
        .filter(|(_, inode)| inodes.contains(inode))
        .map(|(addr, _)| addr)
        .collect();
    found.sort();
    found.dedup();
    found
}

/// What to add to "not ready" when the instance listens, but not on
/// `port` at an address 127.0.0.1 reaches; `None` when it does (the probe
/// failed for another reason) or listens nowhere yet.
pub fn misplaced(port: u16, listening: &[SocketAddr]) -> Option<String> {
    if listening.is_empty()
        || listening
            .iter()
            .any(|a| a.port() == port && reaches(a.ip()))
    {
        return None;
    }
    let list = listening
        .iter()
        .map(SocketAddr::to_string)
        .collect::<Vec<_>>()
        .join(", ");
    Some(if listening.iter().any(|a| a.port() == port) {
        format!(
            "it listens on {list}, which tandem cannot reach at 127.0.0.1:{port}; bind 127.0.0.1, 0.0.0.0 or [::]"
        )
    } else {
        format!("it listens on {list} instead: run.command must listen on $PORT ({port} here)")
    })
}

/// Whether a socket bound to `ip` takes connections to 127.0.0.1.
fn reaches(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => v4.is_unspecified() || v4 == Ipv4Addr::LOCALHOST,
        // `[::]` takes IPv4 too unless the socket is v6-only (rare, and not
        // visible here); `::ffff:127.0.0.1` is 127.0.0.1.
        IpAddr::V6(v6) => v6.is_unspecified() || v6.to_ipv4_mapped() == Some(Ipv4Addr::LOCALHOST),
    }
}

/// The socket inodes the processes of group `pgid` hold open.
fn socket_inodes(pgid: u32) -> HashSet<u64> {
    let mut inodes = HashSet::new();
    for pid in crate::procfs::pids() {
        if crate::procfs::stat(pid).map(|s| s.pgrp) != Some(pgid) {
            continue;
        }
        let Ok(fds) = fs::read_dir(format!("/proc/{pid}/fd")) else {
            continue;
        };
        for fd in fds.flatten() {
            let Ok(target) = fs::read_link(fd.path()) else {
                continue;
            };
            let inode = target
                .to_str()
                .and_then(|t| t.strip_prefix("socket:["))
                .and_then(|t| t.strip_suffix(']'))
                .and_then(|t| t.parse::<u64>().ok());
            inodes.extend(inode);
        }
    }
    inodes
}

/// The listening sockets of a `/proc/net/tcp` or `tcp6` table, with their
/// inodes.
fn listeners(table: &str) -> Vec<(SocketAddr, u64)> {
    const LISTEN: &str = "0A";
    table
        .lines()
        .skip(1)
        .filter_map(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            if fields.get(3) != Some(&LISTEN) {
                return None;
            }
            let addr = parse_addr(fields.get(1)?)?;
            let inode = fields.get(9)?.parse().ok()?;
            Some((addr, inode))
        })
        .collect()
}

/// `0100007F:1F90` (IPv4) or 32 hex digits and a port (IPv6): the address
/// is the kernel's words in host byte order, the port big-endian hex.
fn parse_addr(field: &str) -> Option<SocketAddr> {
    let (ip, port) = field.split_once(':')?;
    let port = u16::from_str_radix(port, 16).ok()?;
    let words = (0..ip.len() / 8)
        .map(|i| u32::from_str_radix(ip.get(i * 8..i * 8 + 8)?, 16).ok())
        .collect::<Option<Vec<u32>>>()?;
    let ip = match words[..] {
        [w] => IpAddr::V4(Ipv4Addr::from(w.to_ne_bytes())),
        [a, b, c, d] => {
            let mut bytes = [0u8; 16];
            for (chunk, word) in bytes.chunks_mut(4).zip([a, b, c, d]) {
                chunk.copy_from_slice(&word.to_ne_bytes());
            }
            IpAddr::V6(Ipv6Addr::from(bytes))
        }
        _ => return None,
    };
    Some(SocketAddr::new(ip, port))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    #[cfg(target_endian = "little")] // the tables print words in host order
    fn the_kernels_tables_read_as_addresses() {
        let v4 = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode\n\
                  0: 0100007F:1F90 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 4242 1 0 100 0 0 10 0\n\
                  1: 0100007F:1F90 0100007F:C350 01 00000000:00000000 00:00000000 00000000     0        0 4343 1 0 20 4 30 10 -1\n";
        assert_eq!(
            listeners(v4),
            vec![("127.0.0.1:8080".parse().expect("addr"), 4242)],
            "the established one (st 01) is no listener"
        );
        let v6 = "  sl  local_address                         remote_address                        st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode\n\
                  0: 00000000000000000000000001000000:1F91 00000000000000000000000000000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 77 1 0 100 0 0 10 0\n\
                  1: 0000000000000000FFFF00000100007F:1F92 00000000000000000000000000000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 78 1 0 100 0 0 10 0\n";
        assert_eq!(
            listeners(v6),
            vec![
                ("[::1]:8081".parse().expect("addr"), 77),
                ("[::ffff:127.0.0.1]:8082".parse().expect("addr"), 78)
            ]
        );
    }

    #[test]
    fn a_socket_of_the_group_is_found_with_its_address() {
        let v4 = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let v6 = std::net::TcpListener::bind("[::1]:0").ok(); // no IPv6 here is fine
        let group = nix::unistd::getpgrp().as_raw() as u32;
        let found = listening(group);
        assert!(found.contains(&v4.local_addr().expect("addr")), "{found:?}");
        if let Some(v6) = v6 {
            assert!(found.contains(&v6.local_addr().expect("addr")), "{found:?}");
        }
        let other_group = group.wrapping_add(1_000_000);
        assert!(!listening(other_group).contains(&v4.local_addr().expect("addr")));
    }

    #[test]
    fn a_misplaced_listener_is_named_and_a_good_one_is_not() {
        let at = |s: &str| s.parse::<SocketAddr>().expect("addr");
        assert_eq!(
            misplaced(8080, &[]),
            None,
            "listens nowhere yet: nothing to say"
        );
        for good in [
            "127.0.0.1:8080",
            "0.0.0.0:8080",
            "[::]:8080",
            "[::ffff:127.0.0.1]:8080",
        ] {
            assert_eq!(
                misplaced(8080, &[at(good), at("127.0.0.1:9")]),
                None,
                "{good}"
            );
        }
        let other = misplaced(8080, &[at("127.0.0.1:45999")]).expect("named");
        assert!(other.contains("127.0.0.1:45999 instead"), "{other}");
        assert!(other.contains("$PORT (8080 here)"), "{other}");
        let v6 = misplaced(8080, &[at("[::1]:8080")]).expect("named");
        assert!(v6.contains("[::1]:8080, which tandem cannot reach"), "{v6}");
    }
}
