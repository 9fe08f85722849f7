use blog_events::Status;

/// The moderation rule: a comment containing any blocked word (a
/// case-sensitive substring) is rejected, every other approved. The default
/// is the course's rule, with the one word `orange`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Policy {
    blocked: Vec<String>,
}

impl Default for Policy {
    fn default() -> Self {
        Self::new(["orange"])
    }
}

impl Policy {
    pub fn new<I: IntoIterator<Item = S>, S: Into<String>>(blocked: I) -> Self {
        Self {
            blocked: blocked
                .into_iter()
                .map(Into::into)
                .filter(|w: &String| !w.is_empty())
                .collect(),
        }
    }

    pub fn decide(&self, content: &str) -> Status {
        if self
            .blocked
            .iter()
            .any(|word| content.contains(word.as_str()))
        {
            Status::Rejected
        } else {
            Status::Approved
        }
    }
}

impl std::str::FromStr for Policy {
    type Err = std::convert::Infallible;

    /// A comma-separated list of blocked words.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Ok(Self::new(s.split(',').map(str::trim)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_course_rule_rejects_orange_case_sensitively() {
        let policy = Policy::default();
        assert_eq!(policy.decide("I like orange juice"), Status::Rejected);
        assert_eq!(policy.decide("oranges"), Status::Rejected);
        assert_eq!(policy.decide("Orange"), Status::Approved);
        assert_eq!(policy.decide("apple"), Status::Approved);
        assert_eq!(policy.decide(""), Status::Approved);
    }

    #[test]
    fn words_are_configurable() {
        let policy: Policy = "spam, eggs,".parse().expect("infallible");
        assert_eq!(policy.decide("spam!"), Status::Rejected);
        assert_eq!(policy.decide("green eggs"), Status::Rejected);
        assert_eq!(policy.decide("orange"), Status::Approved);
        assert_eq!(
            "".parse::<Policy>().expect("infallible").decide("anything"),
            Status::Approved
        );
    }
}
