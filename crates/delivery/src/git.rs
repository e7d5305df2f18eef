//! Git, through the `git` command line: every transport (file, ssh, https),
//! credential helper and config the operator already has works unchanged.
//!
//! Each service has a bare mirror under `data/git/<service>.git`; a run
//! fetches into it and checks its commit out into a fresh workspace that
//! shares the mirror's objects, then brings what the commit refers to from
//! the real remote: submodules (their relative URLs resolved against the
//! repository's URL, not the mirror's) and Git LFS objects.
//!
//! A credential reaches git through its environment for one command only:
//! a token through a credential helper set by `GIT_CONFIG_*`, answering
//! for the repository's host only; a deploy key through `GIT_SSH_COMMAND`
//! and a 0600 file that lives as long as the command. Neither is ever in
//! a process's arguments.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use tokio::process::Command;

/// Longest a single git command may take (a fetch of a large repository).
const GIT_TIMEOUT: Duration = Duration::from_secs(300);

#[derive(Debug, thiserror::Error)]
#[error("git {args}: {message}")]
pub struct GitError {
    pub args: String,
    pub message: String,
}

/// A commit as the journal records it.
#[derive(Clone, Debug, PartialEq)]
pub struct CommitInfo {
    pub sha: String,
    /// `Name <email>`
    pub author: String,
    /// RFC 3339, from the committer date.
    pub committed_at: String,
    /// The subject line.
    pub message: String,
}

/// A credential for a repository.
#[derive(Clone)]
pub enum Credential {
    /// HTTPS: a user name and an access token.
    Token { username: String, token: String },
    /// SSH: a deploy key (an OpenSSH private key). Host keys are learnt on
    /// first use into `known_hosts` and must match from then on.
    SshKey { key: String, known_hosts: PathBuf },
}

impl std::fmt::Debug for Credential {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Credential::Token { username, .. } => write!(f, "Token({username}, ***)"),
            Credential::SshKey { .. } => write!(f, "SshKey(***)"),
        }
    }
}

impl Credential {
    /// Hands the credential to `cmd` for the repository at `url`. What is
    /// returned must outlive the command (the deploy key's file).
    fn apply(&self, cmd: &mut Command, url: &str) -> std::io::Result<Option<tempfile::TempDir>> {
        match self {
            Credential::Token { username, token } => {
                // For the repository's host only (its submodules and LFS
                // store live there too): a redirect to another host gets
                // nothing.
                // First an empty helper, which clears those the operator's
                // config names: git would hand them the token to `store`
                // (`credential.helper=store` writes it to ~/.git-credentials).
                cmd.env("GIT_CONFIG_COUNT", "2")
                    .env("GIT_CONFIG_KEY_0", "credential.helper")
                    .env("GIT_CONFIG_VALUE_0", "")
                    .env("GIT_CONFIG_KEY_1", format!("credential.{}.helper", origin(url)))
                    .env(
                        "GIT_CONFIG_VALUE_1",
                        r#"!f() { test "$1" = get || exit 0; echo "username=$TANDEM_GIT_USERNAME"; echo "password=$TANDEM_GIT_TOKEN"; }; f"#,
                    )
                    .env("TANDEM_GIT_USERNAME", username)
                    .env("TANDEM_GIT_TOKEN", token);
                Ok(None)
            }
            Credential::SshKey { key, known_hosts } => {
                use std::io::Write;
                use std::os::unix::fs::OpenOptionsExt;
                // A private directory (0700) beside `known_hosts`, gone
                // when the command is.
                let home = known_hosts.parent().unwrap_or(Path::new("/tmp"));
                std::fs::create_dir_all(home)?;
                let dir = tempfile::Builder::new().prefix(".key-").tempdir_in(home)?;
                let file = dir.path().join("id");
                let mut f = std::fs::OpenOptions::new()
                    .write(true)
                    .create_new(true)
                    .mode(0o600)
                    .open(&file)?;
                f.write_all(key.as_bytes())?;
                if !key.ends_with('\n') {
                    f.write_all(b"\n")?;
                }
                cmd.env(
                    "GIT_SSH_COMMAND",
                    format!(
                        "ssh -i {} -o IdentitiesOnly=yes -o IdentityAgent=none -o BatchMode=yes -o StrictHostKeyChecking=accept-new -o UserKnownHostsFile={} -o ConnectTimeout=30",
                        shell_quote(&file),
                        shell_quote(known_hosts)
                    ),
                );
                Ok(Some(dir))
            }
        }
    }
}

/// `path` quoted for the shell that runs `GIT_SSH_COMMAND`.
fn shell_quote(path: &Path) -> String {
    format!("'{}'", path.display().to_string().replace('\'', r"'\''"))
}

/// `scheme://host[:port]` of a URL (`https://u@h:1/a/b` → `https://h:1`):
/// what a token is scoped to. A URL without a scheme is returned whole.
fn origin(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_owned();
    };
    let authority = rest.split('/').next().unwrap_or_default();
    let host = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
    format!("{scheme}://{host}")
}

/// `url` as git's own tools all take it: a local path as a `file://` URL
/// (Git LFS knows no bare paths).
fn as_url(url: &str) -> String {
    if url.contains("://") || !url.starts_with('/') {
        url.to_owned()
    } else {
        format!("file://{url}")
    }
}

async fn git(cwd: Option<&Path>, args: &[&str]) -> Result<String, GitError> {
    git_as(cwd, args, None).await
}

/// Runs git with `remote`'s credential, if any: the repository's URL and
/// what it needs to reach it.
async fn git_as(
    cwd: Option<&Path>,
    args: &[&str],
    remote: Option<(&str, &Credential)>,
) -> Result<String, GitError> {
    run(cwd, args, remote, ALL_PROTOCOLS).await
}

/// The transports git may use: no remote helpers (`ext::`, `fd::`,
/// anything `x::`), whose "URL" runs a command.
const ALL_PROTOCOLS: &str = "file:git:http:https:ssh";
/// The same without local files.
const REMOTE_PROTOCOLS: &str = "git:http:https:ssh";

async fn run(
    cwd: Option<&Path>,
    args: &[&str],
    remote: Option<(&str, &Credential)>,
    protocols: &str,
) -> Result<String, GitError> {
    let err = |message: String| GitError {
        args: args.join(" "),
        message,
    };
    let mut cmd = Command::new("git");
    let _key = match remote {
        Some((url, c)) => c
            .apply(&mut cmd, url)
            .map_err(|e| err(format!("cannot hand git the credential: {e}")))?,
        None => None,
    };
    if let Some(cwd) = cwd {
        cmd.current_dir(cwd);
    }
    cmd.args(args)
        // Never prompt for credentials: a daemon has no terminal.
        .env("GIT_TERMINAL_PROMPT", "0")
        // Only these transports, for the repository and its submodules.
        // (`GIT_PROTOCOL_FROM_USER=0` would also refuse `file`, which git
        // counts as a user protocol since 2.38, and so every repository
        // the operator registers by its path.)
        .env("GIT_ALLOW_PROTOCOL", protocols)
        // LFS objects are fetched by `lfs pull`, from the real remote.
        .env("GIT_LFS_SKIP_SMUDGE", "1")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    let out = tokio::time::timeout(GIT_TIMEOUT, cmd.output())
        .await
        .map_err(|_| err(format!("no answer within {GIT_TIMEOUT:?}")))?
        .map_err(|e| err(format!("cannot run git: {e}")))?;
    if !out.status.success() {
        let stderr = String::from_utf8_lossy(&out.stderr);
        return Err(err(stderr.trim().to_owned()));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// The commit `branch` points at in the repository at `url`, without
/// fetching anything (`git ls-remote`); `None` when there is no such branch.
pub async fn remote_head(
    url: &str,
    branch: &str,
    credential: Option<&Credential>,
) -> Result<Option<String>, GitError> {
    let refname = format!("refs/heads/{branch}");
    let out = git_as(
        None,
        &["ls-remote", "--", url, &refname],
        credential.map(|c| (url, c)),
    )
    .await?;
    Ok(out
        .lines()
        .filter_map(|l| l.split_once('\t'))
        .find(|(_, r)| *r == refname)
        .map(|(sha, _)| sha.to_owned()))
}

/// Creates the bare mirror of `url` at `mirror` if missing, then fetches
/// `branch` into it. Returns the fetched head.
pub async fn fetch(
    mirror: &Path,
    url: &str,
    branch: &str,
    credential: Option<&Credential>,
) -> Result<String, GitError> {
    let m = mirror.display().to_string();
    if !mirror.join("HEAD").exists() {
        if let Some(parent) = mirror.parent() {
            std::fs::create_dir_all(parent).map_err(|e| GitError {
                args: "init".into(),
                message: format!("{}: {e}", parent.display()),
            })?;
        }
        git(None, &["init", "--quiet", "--bare", &m]).await?;
    }
    let refspec = format!("+refs/heads/{branch}:refs/heads/{branch}");
    // Tags too: `deploy --ref v1.2.0` names one.
    git_as(
        Some(mirror),
        &[
            "fetch",
            "--quiet",
            "--no-tags",
            "--",
            url,
            &refspec,
            "+refs/tags/*:refs/tags/*",
        ],
        credential.map(|c| (url, c)),
    )
    .await?;
    let head = git(
        Some(mirror),
        &["rev-parse", &format!("refs/heads/{branch}")],
    )
    .await?;
    Ok(head.trim().to_owned())
}

/// Whether `ancestor` is `descendant` or one of its ancestors (both in the
/// mirror): a move from one to the other goes forward along history.
pub async fn is_ancestor(
    mirror: &Path,
    ancestor: &str,
    descendant: &str,
) -> Result<bool, GitError> {
    match git(
        Some(mirror),
        &["merge-base", "--is-ancestor", ancestor, descendant],
    )
    .await
    {
        Ok(_) => Ok(true),
        // Exit status 1, nothing on stderr: not an ancestor.
        Err(e) if e.message.is_empty() => Ok(false),
        Err(e) => Err(e),
    }
}

/// Fetches one ref the branch and tags do not bring (another branch, a
/// commit the server lets clients ask for) and returns its commit.
pub async fn fetch_ref(
    mirror: &Path,
    url: &str,
    rev: &str,
    credential: Option<&Credential>,
) -> Result<String, GitError> {
    if rev.starts_with('-') {
        return Err(GitError {
            args: "fetch".into(),
            message: format!("{rev:?} is not a ref"),
        });
    }
    git_as(
        Some(mirror),
        &["fetch", "--quiet", "--no-tags", "--", url, rev],
        credential.map(|c| (url, c)),
    )
    .await?;
    resolve(mirror, "FETCH_HEAD").await
}

/// Resolves `rev` (a sha, a branch, a tag that was fetched) in the mirror.
pub async fn resolve(mirror: &Path, rev: &str) -> Result<String, GitError> {
    let spec = format!("{rev}^{{commit}}");
    Ok(
        git(Some(mirror), &["rev-parse", "--verify", "--quiet", &spec])
            .await?
            .trim()
            .to_owned(),
    )
}

pub async fn commit_info(mirror: &Path, sha: &str) -> Result<CommitInfo, GitError> {
    let out = git(
        Some(mirror),
        &["show", "-s", "--format=%H%x00%an <%ae>%x00%cI%x00%s", sha],
    )
    .await?;
    let mut parts = out.trim_end().splitn(4, '\0');
    let mut next = || parts.next().unwrap_or_default().to_owned();
    Ok(CommitInfo {
        sha: next(),
        author: next(),
        committed_at: next(),
        message: next(),
    })
}

/// Checks `sha` out into `dest` (which must not exist), sharing the mirror's
/// objects, detached; then its submodules and LFS objects from `url`, the
/// real remote.
pub async fn checkout(
    mirror: &Path,
    sha: &str,
    dest: &Path,
    url: &str,
    credential: Option<&Credential>,
) -> Result<(), GitError> {
    let (m, d) = (mirror.display().to_string(), dest.display().to_string());
    git(
        None,
        &["clone", "--quiet", "--shared", "--no-checkout", &m, &d],
    )
    .await?;
    git(Some(dest), &["checkout", "--quiet", "--detach", sha]).await?;
    let submodules = dest.join(".gitmodules").exists();
    let lfs = uses_lfs(dest);
    if !submodules && !lfs {
        return Ok(());
    }
    // What a relative submodule URL and the LFS store are found from.
    let url = as_url(url);
    git(Some(dest), &["remote", "set-url", "origin", &url]).await?;
    let remote = credential.map(|c| (url.as_str(), c));
    if submodules {
        // A submodule may not point into this server's own files (another
        // service's mirror, the data directory) unless the repository is
        // itself a local one.
        let protocols = if url.starts_with("file://") {
            ALL_PROTOCOLS
        } else {
            REMOTE_PROTOCOLS
        };
        run(
            Some(dest),
            &["submodule", "--quiet", "update", "--init", "--recursive"],
            remote,
            protocols,
        )
        .await?;
    }
    if lfs {
        let failed = |why: String| {
            let pointers = lfs_pointers(dest);
            GitError {
                args: "lfs pull".into(),
                message: format!(
                    "the commit uses Git LFS and {} file(s) could not be fetched (e.g. {}): {why}; pointer files are never released in place of the files",
                    pointers.len(),
                    pointers
                        .first()
                        .map_or("?".into(), |p| p.display().to_string()),
                ),
            }
        };
        if !lfs_installed().await {
            return Err(failed(
                "git-lfs is not installed on this server (apt-get install git-lfs)".into(),
            ));
        }
        // A commit does not choose where its objects come from: git-lfs
        // would follow a `.lfsconfig` URL anywhere (this server's files,
        // an internal address), past the transports allowed above.
        if dest.join(".lfsconfig").exists() {
            return Err(failed(
                "the commit has a .lfsconfig; tandem fetches LFS objects from the repository itself only".into(),
            ));
        }
        git(Some(dest), &["lfs", "install", "--local"]).await?;
        git_as(Some(dest), &["lfs", "pull"], remote)
            .await
            .map_err(|e| failed(e.message))?;
    }
    Ok(())
}

/// Whether the checkout at `root` routes any file through Git LFS.
pub fn uses_lfs(root: &Path) -> bool {
    std::fs::read_to_string(root.join(".gitattributes")).is_ok_and(|a| a.contains("filter=lfs"))
}

/// Files under `root` (its `.git` aside) that are Git LFS pointers, when
/// its `.gitattributes` routes anything through LFS.
pub fn lfs_pointers(root: &Path) -> Vec<PathBuf> {
    const POINTER: &[u8] = b"version https://git-lfs.github.com/spec/v1";
    if !uses_lfs(root) {
        return Vec::new();
    }
    let mut found = Vec::new();
    let mut dirs = vec![root.to_path_buf()];
    while let Some(dir) = dirs.pop() {
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for e in entries.flatten() {
            let Ok(kind) = e.file_type() else { continue };
            if kind.is_dir() && e.file_name() != ".git" {
                dirs.push(e.path());
            } else if kind.is_file()
                && e.metadata().is_ok_and(|m| m.len() < 1024)
                && std::fs::read(e.path()).is_ok_and(|b| b.starts_with(POINTER))
            {
                found.push(
                    e.path()
                        .strip_prefix(root)
                        .unwrap_or(&e.path())
                        .to_path_buf(),
                );
            }
        }
    }
    found.sort();
    found
}

async fn lfs_installed() -> bool {
    git(None, &["lfs", "version"]).await.is_ok()
}

/// Reads one file of a commit (`tandem.yaml` at the head, at registration),
/// unless it is larger than `max` bytes: then `Ok(None)`, and it is never
/// read (a repository can hold a file of any size).
pub async fn show_file(
    mirror: &Path,
    sha: &str,
    path: &str,
    max: usize,
) -> Result<Option<String>, GitError> {
    let object = format!("{sha}:{path}");
    let size = git(Some(mirror), &["cat-file", "-s", &object]).await?;
    if size.trim().parse::<usize>().map_or(true, |n| n > max) {
        return Ok(None);
    }
    git(Some(mirror), &["show", &object]).await.map(Some)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn transports_other_than_file_git_http_and_ssh_are_refused() {
        let err = git(None, &["ls-remote", "tandemtest::anything"])
            .await
            .expect_err("refused");
        assert!(err.message.contains("not allowed"), "{}", err.message);
    }

    fn sh(dir: &Path, args: &[&str]) {
        let out = std::process::Command::new("git")
            .args([
                "-c",
                "user.name=t",
                "-c",
                "user.email=t@t",
                "-c",
                "protocol.file.allow=always",
            ])
            .args(args)
            .current_dir(dir)
            .output()
            .expect("git");
        assert!(out.status.success(), "git {args:?}: {out:?}");
    }

    #[tokio::test]
    async fn a_submodule_of_a_remote_repository_cannot_reach_into_local_files() {
        let tmp = tempfile::tempdir().expect("tmp");
        let secret = tmp.path().join("secret");
        let app = tmp.path().join("app");
        for dir in [&secret, &app] {
            std::fs::create_dir_all(dir).expect("mkdir");
            sh(dir, &["init", "-q", "-b", "main"]);
        }
        std::fs::write(secret.join("key"), "private").expect("write");
        sh(&secret, &["add", "key"]);
        sh(&secret, &["commit", "-qm", "secret"]);
        let secret_url = secret.display().to_string();
        sh(&app, &["submodule", "add", "-q", &secret_url, "vendor"]);
        sh(&app, &["commit", "-qm", "app"]);
        let mirror = tmp.path().join("mirror.git");
        let app_url = app.display().to_string();
        sh(
            tmp.path(),
            &["clone", "-q", "--bare", &app_url, "mirror.git"],
        );
        let head = resolve(&mirror, "HEAD").await.expect("head");

        // The same commit, as if from a server: the submodule is refused.
        let err = checkout(
            &mirror,
            &head,
            &tmp.path().join("w1"),
            "https://example.invalid/app.git",
            None,
        )
        .await
        .expect_err("a local submodule of a remote repository");
        assert!(err.message.contains("not allowed"), "{}", err.message);
        assert!(!tmp.path().join("w1/vendor/key").exists());

        // From a local repository, a local submodule is the operator's own.
        checkout(&mirror, &head, &tmp.path().join("w2"), &app_url, None)
            .await
            .expect("a local repository's local submodule");
        assert_eq!(
            std::fs::read_to_string(tmp.path().join("w2/vendor/key")).expect("read"),
            "private"
        );
    }

    #[test]
    fn a_token_is_scoped_to_the_repositorys_scheme_and_host() {
        assert_eq!(
            origin("https://git.example:8443/a/b.git"),
            "https://git.example:8443"
        );
        assert_eq!(origin("https://u@git.example/a"), "https://git.example");
        assert_eq!(as_url("/srv/git/a.git"), "file:///srv/git/a.git");
        assert_eq!(as_url("git@host:a.git"), "git@host:a.git");
    }
}
