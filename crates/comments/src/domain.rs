use blog_events::MAX_ID_LEN;
use blog_kit::FieldError;
use blog_kit::error::required_string;
use serde_json::Value;

/// A comment's content: trimmed, not empty, at most [`CommentContent::MAX_CHARS`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CommentContent(String);

impl CommentContent {
    pub const MAX_CHARS: usize = 1000;

    pub fn from_body(body: &Value) -> Result<Self, FieldError> {
        required_string(body, "content", Self::MAX_CHARS).map(Self)
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// A post id from the path. Comments does not know which posts exist (only
/// events could tell it, and the course does not send it them), so any
/// well-formed id is accepted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PostId(String);

impl PostId {
    pub fn parse(id: &str) -> Result<Self, FieldError> {
        if id.is_empty() || id.len() > MAX_ID_LEN || id.chars().any(char::is_control) {
            Err(FieldError::new(
                format!("post id must be 1 to {MAX_ID_LEN} bytes without control characters"),
                "id",
            ))
        } else {
            Ok(Self(id.to_owned()))
        }
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
    fn validates_content_and_post_ids() {
        assert!(CommentContent::from_body(&json!({"content": "nice"})).is_ok());
        assert!(CommentContent::from_body(&json!({"content": ""})).is_err());
        assert!(CommentContent::from_body(&json!({"content": "x".repeat(1001)})).is_err());
        assert!(PostId::parse("0192-abc").is_ok());
        assert!(PostId::parse("").is_err());
        assert!(PostId::parse(&"x".repeat(129)).is_err());
        assert!(PostId::parse("a\nb").is_err());
    }
}
