//! Masking secret values in text shown to people (run logs, deploy
//! streams, instance logs): each value becomes `***`. A value shorter than
//! [`MIN_MASKED_CHARS`] is left alone: it is no secret worth the name, and
//! masking it would garble ordinary words (a one-character value turned
//! "draining" into "d***aining").

/// Values shorter than this are not masked.
pub const MIN_MASKED_CHARS: usize = 4;

/// The values to mask, longest first (a secret containing another is
/// masked whole), without repeats or values too short to be secrets.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Masker(Vec<String>);

impl Masker {
    pub fn new(values: impl IntoIterator<Item = String>) -> Masker {
        let mut all: Vec<String> = values
            .into_iter()
            .filter(|s| s.chars().count() >= MIN_MASKED_CHARS)
            .collect();
        all.sort_by_key(|s| std::cmp::Reverse(s.len()));
        all.dedup();
        Masker(all)
    }

    /// This and `more` together.
    pub fn with(&self, more: impl IntoIterator<Item = String>) -> Masker {
        Masker::new(self.0.iter().cloned().chain(more))
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// `text` with each value replaced by `***`.
    pub fn mask(&self, text: &str) -> String {
        let mut out = text.to_owned();
        for s in &self.0 {
            if out.contains(s.as_str()) {
                out = out.replace(s.as_str(), "***");
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_are_masked_longest_first_and_short_ones_left_alone() {
        let masker = Masker::new(["d".into(), "hunter2".into(), "hunter2-long".into()]);
        assert_eq!(
            masker,
            Masker(vec!["hunter2-long".into(), "hunter2".into()])
        );
        assert_eq!(
            masker.mask("draining with hunter2-long and hunter2"),
            "draining with *** and ***"
        );
    }
}
