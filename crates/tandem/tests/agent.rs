//! The agent process on its own.

use std::process::Command;
use std::time::Duration;

mod util;
use util::{bin, open_files_limit, wait_until};

#[test]
fn the_agent_raises_its_open_files_limit_to_the_hard_one() {
    let root = tempfile::tempdir().expect("tempdir");
    let data = root.path().join("data");
    // Started the way a login shell would leave it: a low soft limit.
    let mut agent = Command::new("/bin/sh")
        .arg("-c")
        .arg(r#"ulimit -S -n 512 && exec "$0" agent --data-dir "$1" --proxy-addr 127.0.0.1:0"#)
        .arg(bin())
        .arg(&data)
        .spawn()
        .expect("spawn agent");
    wait_until(Duration::from_secs(10), "the agent's socket", || {
        data.join("agent.sock").exists().then_some(())
    });
    let (soft, hard) = open_files_limit(agent.id());
    let _ = agent.kill();
    let _ = agent.wait();
    assert!(soft > 512, "soft limit still {soft}");
    assert_eq!(soft, hard.min(1 << 20), "raised to the hard limit");
}
