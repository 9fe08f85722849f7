use blog_kit::FieldError;
use blog_kit::error::required_string;
use serde_json::Value;

/// A post's title: trimmed, not empty, at most [`PostTitle::MAX_CHARS`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PostTitle(String);

impl PostTitle {
    pub const MAX_CHARS: usize = 200;

    /// Reads the `title` field of a request body.
    pub fn from_body(body: &Value) -> Result<Self, FieldError> {
        required_string(body, "title", Self::MAX_CHARS).map(Self)
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn accepts_a_title_and_refuses_bad_ones() {
        assert_eq!(
            PostTitle::from_body(&json!({"title": " Hi "})).map(|t| t.0),
            Ok("Hi".into())
        );
        assert_eq!(
            PostTitle::from_body(&json!({"title": "a\tb\r\nc"})).map(|t| t.0),
            Ok("a\tb\r\nc".into()),
            "tab and line breaks are text"
        );
        for bad in [
            json!({}),
            json!({"title": ""}),
            json!({"title": 1}),
            json!({"title": "x".repeat(201)}),
            json!({"title": "a\u{0}b"}),
            json!({"title": "a\u{7f}"}),
        ] {
            let err = PostTitle::from_body(&bad).expect_err("invalid");
            assert_eq!(err.field.as_deref(), Some("title"));
        }
    }
}
