//! The Ingress rules for `posts.com` (which service gets each path, with the
//! course's service names and ports: the registry of parts holds them, in
//! the order `infra/k8s/base/ingress.yaml` lists them, `blog routes` prints
//! them and the checks in `infra/tests` assert the two agree), and how
//! ingress-nginx applies them.

use regex::Regex;
use serde::Serialize;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum PathType {
    Prefix,
    ImplementationSpecific,
}

/// One path of `ingress-srv` for host `posts.com`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Rule {
    pub path: &'static str,
    pub path_type: PathType,
    pub service: &'static str,
    pub port: u16,
}

/// Rules compiled the way ingress-nginx does with
/// `nginx.ingress.kubernetes.io/use-regex: "true"`: every path is a
/// case-insensitive regular expression anchored at the start of the request
/// path, and longer paths are tried first (ties keep manifest order).
#[derive(Debug, Clone)]
pub struct RuleSet {
    ordered: Vec<(Regex, Rule)>,
}

impl RuleSet {
    pub fn new(rules: &[Rule]) -> Self {
        let mut ordered: Vec<(Regex, Rule)> = rules
            .iter()
            .map(|rule| {
                // The rules are constants, checked by the tests.
                #[allow(clippy::unwrap_used)]
                let regex = Regex::new(&format!("(?i)^{}", rule.path)).unwrap();
                (regex, *rule)
            })
            .collect();
        ordered.sort_by_key(|(_, rule)| std::cmp::Reverse(rule.path.len()));
        Self { ordered }
    }

    pub fn route(&self, path: &str) -> Option<&Rule> {
        self.ordered
            .iter()
            .find(|(regex, _)| regex.is_match(path))
            .map(|(_, rule)| rule)
    }
}

/// The course's rules, for the tests of this crate.
#[cfg(test)]
pub(crate) fn course() -> Vec<Rule> {
    let rule = |path, path_type, service, port| Rule {
        path,
        path_type,
        service,
        port,
    };
    vec![
        rule(
            "/posts/create",
            PathType::Prefix,
            "posts-clusterip-srv",
            4000,
        ),
        rule(
            "/posts/?(.*)/comments",
            PathType::ImplementationSpecific,
            "comments-srv",
            4001,
        ),
        rule("/posts", PathType::Prefix, "query-srv", 4002),
        rule(
            "/?(.*)",
            PathType::ImplementationSpecific,
            "client-srv",
            3000,
        ),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn service(path: &str) -> &'static str {
        RuleSet::new(&course())
            .route(path)
            .expect("the catch-all matches everything")
            .service
    }

    #[test]
    fn routes_the_course_paths() {
        assert_eq!(service("/posts/create"), "posts-clusterip-srv");
        assert_eq!(service("/posts"), "query-srv");
        assert_eq!(service("/posts/live"), "query-srv");
        assert_eq!(service("/posts/0192abcd/comments"), "comments-srv");
        assert_eq!(service("/posts/abc/comments/"), "comments-srv");
        assert_eq!(service("/"), "client-srv");
        assert_eq!(service("/assets/index-abc.js"), "client-srv");
        assert_eq!(service("/healthz"), "client-srv");
    }

    #[test]
    fn matches_like_nginx_regex_locations() {
        // Case-insensitive, anchored at the start only.
        assert_eq!(service("/POSTS/CREATE"), "posts-clusterip-srv");
        assert_eq!(service("/posts/createx"), "posts-clusterip-srv");
        assert_eq!(service("/postsxyz"), "query-srv");
        assert_eq!(service("/x/posts"), "client-srv");
        // The longer comments rule is tried before /posts/create.
        assert_eq!(service("/posts/create/comments"), "comments-srv");
    }
}
