//! Git, through the `git` command line: every transport (file, ssh, https),
//! credential helper and config the operator already has works unchanged.
//!
//! Each service has a bare mirror under `data/git/<service>.git`; a run
//! fetches into it and checks its commit out into a fresh workspace that
//! shares the mirror's objects.

use std::path::Path;
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

/// A credential for a repository over HTTPS: handed to one git command
/// through its environment (a credential helper set by `GIT_CONFIG_*`,
/// the token in a variable), never in its arguments, where `ps` shows it.
#[derive(Clone)]
pub struct Credential {
    pub username: String,
    pub token: String,
}

impl std::fmt::Debug for Credential {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Credential({}, ***)", self.username)
    }
}

async fn git(cwd: Option<&Path>, args: &[&str]) -> Result<String, GitError> {
    git_as(cwd, args, None).await
}

async fn git_as(
    cwd: Option<&Path>,
    args: &[&str],
    credential: Option<&Credential>,
) -> Result<String, GitError> {
    let mut cmd = Command::new("git");
    if let Some(c) = credential {
        // Scoped to the repository's URL (the argument after `--`): a
        // redirect to another host gets nothing.
        let url = args
            .iter()
            .skip_while(|a| **a != "--")
            .nth(1)
            .copied()
            .unwrap_or_default();
        cmd.env("GIT_CONFIG_COUNT", "1")
            .env("GIT_CONFIG_KEY_0", format!("credential.{url}.helper"))
            .env(
                "GIT_CONFIG_VALUE_0",
                r#"!f() { test "$1" = get || exit 0; echo "username=$TANDEM_GIT_USERNAME"; echo "password=$TANDEM_GIT_TOKEN"; }; f"#,
            )
            .env("TANDEM_GIT_USERNAME", &c.username)
            .env("TANDEM_GIT_TOKEN", &c.token);
    }
    if let Some(cwd) = cwd {
        cmd.current_dir(cwd);
    }
    cmd.args(args)
        // Never prompt for credentials: a daemon has no terminal.
        .env("GIT_TERMINAL_PROMPT", "0")
        // Only these transports, for the repository and its submodules:
        // no remote helpers (`ext::`, `fd::`, anything `x::`), whose
        // "URL" runs a command. (`GIT_PROTOCOL_FROM_USER=0` would also
        // refuse `file`, which git counts as a user protocol since 2.38,
        // and so every repository the operator registers by its path.)
        .env("GIT_ALLOW_PROTOCOL", "file:git:http:https:ssh")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    let err = |message: String| GitError {
        args: args.join(" "),
        message,
    };
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
    let out = git_as(None, &["ls-remote", "--", url, &refname], credential).await?;
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
        credential,
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
        credential,
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
/// objects, detached.
pub async fn checkout(mirror: &Path, sha: &str, dest: &Path) -> Result<(), GitError> {
    let (m, d) = (mirror.display().to_string(), dest.display().to_string());
    git(
        None,
        &["clone", "--quiet", "--shared", "--no-checkout", &m, &d],
    )
    .await?;
    git(Some(dest), &["checkout", "--quiet", "--detach", sha]).await?;
    Ok(())
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
}
