//! Keyset pagination. A page token carries the last id of the previous page
//! and a check over that id and the request's filter, so a token that was
//! mangled, forged at random, or replayed with other filters is refused
//! instead of silently returning the wrong page. (It protects integrity, not
//! secrecy: the id inside is no secret.)
use base64::{Engine, engine::general_purpose::URL_SAFE_NO_PAD};
use sha2::{Digest, Sha256};

use super::FieldViolation;

pub const DEFAULT_PAGE_SIZE: usize = 50;
pub const MAX_PAGE_SIZE: usize = 1000;
const CHECK_LEN: usize = 12;

/// A validated page request: how many rows, and after which id.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PageRequest {
    pub size: usize,
    pub after: Option<String>,
    filter: String,
}

impl PageRequest {
    /// `filter` describes the request's other fields; a token is only valid
    /// with the same filter it was issued for.
    pub fn parse(page_size: i32, page_token: &str, filter: String) -> Result<Self, FieldViolation> {
        let size = match page_size {
            0 => DEFAULT_PAGE_SIZE,
            n if n < 0 => return Err(FieldViolation::new("page_size", "must not be negative")),
            n if n as usize > MAX_PAGE_SIZE => {
                return Err(FieldViolation::new(
                    "page_size",
                    format!("must be at most {MAX_PAGE_SIZE}"),
                ));
            }
            n => n as usize,
        };
        let after = if page_token.is_empty() {
            None
        } else {
            Some(decode(page_token, &filter).ok_or_else(|| {
                FieldViolation::new(
                    "page_token",
                    "is not a token this list returned for the same request",
                )
            })?)
        };
        Ok(Self {
            size,
            after,
            filter,
        })
    }

    /// How many rows to fetch: one more than the page, to know if more follow.
    pub fn fetch_limit(&self) -> i64 {
        self.size as i64 + 1
    }
}

/// One page of results and the token for the next one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Page<T> {
    pub items: Vec<T>,
    pub next_page_token: String,
}

impl<T> Page<T> {
    /// Builds a page from up to `fetch_limit` rows sorted by id.
    pub fn from_rows(request: &PageRequest, mut rows: Vec<T>, id: impl Fn(&T) -> String) -> Self {
        let next_page_token = if rows.len() > request.size {
            rows.truncate(request.size);
            rows.last()
                .map(|last| encode(&id(last), &request.filter))
                .unwrap_or_default()
        } else {
            String::new()
        };
        Self {
            items: rows,
            next_page_token,
        }
    }
}

fn check(after: &str, filter: &str) -> [u8; CHECK_LEN] {
    let digest = Sha256::new()
        .chain_update(b"tollgate-page-v1\0")
        .chain_update(after.as_bytes())
        .chain_update([0])
        .chain_update(filter.as_bytes())
        .finalize();
    digest[..CHECK_LEN]
        .try_into()
        .expect("digest is long enough")
}

fn encode(after: &str, filter: &str) -> String {
    let mut bytes = after.as_bytes().to_vec();
    bytes.extend_from_slice(&check(after, filter));
    URL_SAFE_NO_PAD.encode(bytes)
}

fn decode(token: &str, filter: &str) -> Option<String> {
    let bytes = URL_SAFE_NO_PAD.decode(token).ok()?;
    if bytes.len() <= CHECK_LEN {
        return None;
    }
    let (after, tag) = bytes.split_at(bytes.len() - CHECK_LEN);
    let after = std::str::from_utf8(after).ok()?;
    use subtle::ConstantTimeEq;
    bool::from(tag.ct_eq(&check(after, filter))).then(|| after.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_round_trip_only_with_their_filter() {
        let req = PageRequest::parse(1, "", "plan=a".into()).unwrap();
        let page = Page::from_rows(&req, vec!["x", "y"], |s| s.to_string());
        assert_eq!(page.items, vec!["x"]);
        let next = PageRequest::parse(1, &page.next_page_token, "plan=a".into()).unwrap();
        assert_eq!(next.after.as_deref(), Some("x"));
        assert!(PageRequest::parse(1, &page.next_page_token, "plan=b".into()).is_err());
        assert!(PageRequest::parse(1, "AAAAAAAAAAAAAAAAAAAAAAAA", "plan=a".into()).is_err());
        assert!(PageRequest::parse(1, "not base64!", "plan=a".into()).is_err());
    }

    #[test]
    fn page_size_is_bounded() {
        assert_eq!(PageRequest::parse(0, "", String::new()).unwrap().size, 50);
        assert!(PageRequest::parse(1_000_000_000, "", String::new()).is_err());
        assert!(PageRequest::parse(-1, "", String::new()).is_err());
    }
}
