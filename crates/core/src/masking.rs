//! Masking secret values in text shown to people (run logs, deploy
//! streams, instance logs): each value becomes `***`. A value shorter than
//! [`MIN_MASKED_CHARS`] is left alone: it is no secret worth the name, and
//! masking it would garble ordinary words (a one-character value turned
//! "draining" into "d***aining").

/// Values shorter than this are not masked.
pub const MIN_MASKED_CHARS: usize = 4;

/// The values worth masking, longest first (a secret containing another
/// is masked whole), without repeats.
pub fn maskable(values: impl IntoIterator<Item = String>) -> Vec<String> {
    let mut all: Vec<String> = values
        .into_iter()
        .filter(|s| s.chars().count() >= MIN_MASKED_CHARS)
        .collect();
    all.sort_by_key(|s| std::cmp::Reverse(s.len()));
    all.dedup();
    all
}

/// `text` with each of `secrets` (as [`maskable`] gives them) replaced by
/// `***`.
pub fn mask(text: &str, secrets: &[String]) -> String {
    let mut out = text.to_owned();
    for s in secrets
        .iter()
        .filter(|s| s.chars().count() >= MIN_MASKED_CHARS)
    {
        if out.contains(s.as_str()) {
            out = out.replace(s.as_str(), "***");
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_are_masked_longest_first_and_short_ones_left_alone() {
        let secrets = maskable(["d".into(), "hunter2".into(), "hunter2-long".into()]);
        assert_eq!(secrets, ["hunter2-long", "hunter2"]);
        assert_eq!(
            mask("draining with hunter2-long and hunter2", &secrets),
            "draining with *** and ***"
        );
    }
}
