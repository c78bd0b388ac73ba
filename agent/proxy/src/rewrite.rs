//! `rewrite.uri` and `rewrite.uriRegexRewrite`: the path sent upstream. The query string is
//! kept as it came, as Envoy's `prefix_rewrite` and `regex_rewrite` do.

use http::request::Parts;

use super::headers;
use super::matching::Matcher;
use meshpath_model::l7::Rewrite;

/// Rewrites the request's path in place. `matcher` is the match that selected the route: a
/// prefix rewrite replaces what it matched (the whole path for other matches).
pub(crate) fn path(rw: &Rewrite, matcher: Option<&Matcher>, head: &mut Parts) {
    let path = head.uri.path();
    let new_path = if let Some(prefix) = &rw.uri {
        let keep = matcher.map_or(usize::from(path.starts_with('/')), |m| m.rewrite_len(path));
        let mut p = String::with_capacity(prefix.len() + path.len());
        p.push_str(prefix);
        p.push_str(&path[keep..]);
        p
    } else if let Some((pattern, substitution)) = &rw.uri_regex {
        pattern
            .replace_all(path, substitution.as_str())
            .into_owned()
    } else {
        return;
    };
    let mut pq = new_path;
    if pq.is_empty() {
        pq.push('/');
    }
    if let Some(q) = head.uri.query() {
        pq.push('?');
        pq.push_str(q);
    }
    headers::set_path_and_query(&mut head.uri, &pq);
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use http::Request;

    use super::*;

    fn head(uri: &str) -> Parts {
        Request::get(uri).body(()).unwrap().into_parts().0
    }

    fn regex(pattern: &str, substitution: &str) -> Rewrite {
        Rewrite {
            uri_regex: Some((
                Arc::new(regex::Regex::new(pattern).unwrap()),
                substitution.into(),
            )),
            ..Rewrite::default()
        }
    }

    #[test]
    fn regex_rewrite_replaces_every_match_in_the_path_only() {
        let mut h = head("/service/foo/v1/api?x=/service/");
        path(
            &regex("^/service/([^/]+)(/.*)$", "${2}/instance/${1}"),
            None,
            &mut h,
        );
        assert_eq!(h.uri, "/v1/api/instance/foo?x=/service/");
        let mut h = head("/aaa/b?a=a");
        path(&regex("a", "x"), None, &mut h);
        assert_eq!(h.uri, "/xxx/b?a=a");
        // Everything replaced away: the path is `/`.
        let mut h = head("/drop");
        path(&regex("^/drop$", ""), None, &mut h);
        assert_eq!(h.uri, "/");
        let mut h = head("/nomatch");
        path(&regex("zzz", "y"), None, &mut h);
        assert_eq!(h.uri, "/nomatch");
    }

    #[test]
    fn prefix_rewrite_without_a_matcher_replaces_the_leading_slash() {
        let mut h = head("/a/b?q=1");
        let rw = Rewrite {
            uri: Some("/v2/".into()),
            ..Rewrite::default()
        };
        path(&rw, None, &mut h);
        assert_eq!(h.uri, "/v2/a/b?q=1");
    }
}
