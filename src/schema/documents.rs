//! Parsed operations, kept by their text.
//!
//! Clients send the same few operation texts over and over with different variables (a
//! `createOrder` mutation, a `trace` query). Parsing was about 15 % of the API's own CPU time
//! per accept in a profile of `scripts/bench --pg` (the `pest` grammar), so the HTTP endpoint
//! keeps the documents it parsed and hands async-graphql a copy on the next request with the
//! same text. Only parsing is skipped: every request is still validated against the schema
//! with its own variables, and executed as before. A text that does not parse is never kept
//! (async-graphql parses it again and reports the error).
//!
//! An entry also keeps, once a request with its text has run without errors, the [`Plan`]
//! by which later command mutations with that text are answered directly (`super::direct`).
//!
//! The cache is bounded (`--document-cache` entries, 0 turns it off); when it is full, an
//! arbitrary entry makes room, so a stream of one-off texts costs a parse each and no memory.
//! Texts longer than [`MAX_TEXT`] are not kept.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};

use async_graphql::Request;
use async_graphql::parser::types::ExecutableDocument;

use super::SchemaDoc;
use super::direct::Plan;

/// Longest operation text the cache keeps.
pub const MAX_TEXT: usize = 16 << 10;

pub struct Documents {
    capacity: usize,
    parsed: Mutex<HashMap<Box<str>, Arc<Kept>>>,
}

/// One kept text: its parsed document and, once learned, its direct plan (`None` when its
/// shape is not one the direct path takes).
pub struct Kept {
    doc: ExecutableDocument,
    plan: OnceLock<Option<Plan>>,
}

impl Kept {
    pub fn plan(&self) -> Option<&Plan> {
        self.plan.get().and_then(Option::as_ref)
    }

    /// Records the plan of this text, run as `operation_name`; call after a request with it
    /// ran through the general executor without errors. Only the first call decides.
    pub fn learn(&self, schema: &SchemaDoc, operation_name: Option<&str>) {
        self.plan
            .get_or_init(|| Plan::of(schema, &self.doc, operation_name));
    }
}

impl Documents {
    pub fn new(capacity: usize) -> Self {
        Self {
            capacity,
            parsed: Mutex::new(HashMap::with_capacity(capacity.min(1024))),
        }
    }

    /// The entry kept for `text`, if any.
    pub fn kept(&self, text: &str) -> Option<Arc<Kept>> {
        self.lock().get(text).cloned()
    }

    /// Gives `request` its parsed document: a copy of the kept one, or a fresh parse that is
    /// kept for the next time; returns the entry. Leaves the request alone when its text does
    /// not parse.
    pub fn prepare(&self, request: &mut Request) -> Option<Arc<Kept>> {
        let text = request.query.as_str();
        if self.capacity == 0 || text.len() > MAX_TEXT {
            return None;
        }
        let kept = self.lock().get(text).cloned();
        let doc = match kept {
            Some(doc) => doc,
            None => {
                let doc = async_graphql::parser::parse_query(text).ok()?;
                let doc = Arc::new(Kept {
                    doc,
                    plan: OnceLock::new(),
                });
                let mut parsed = self.lock();
                if parsed.len() >= self.capacity
                    && let Some(old) = parsed.keys().next().cloned()
                {
                    parsed.remove(&old);
                }
                parsed.insert(text.into(), doc.clone());
                doc
            }
        };
        request.set_parsed_query(ExecutableDocument::clone(&doc.doc));
        Some(doc)
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.lock().len()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<Box<str>, Arc<Kept>>> {
        // A panic while holding the lock leaves a map that is still whole.
        self.parsed.lock().unwrap_or_else(|e| e.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const CREATE: &str = "mutation($i: CreateOrderInput!) { createOrder(input: $i) { traceId } }";

    #[test]
    fn a_text_is_parsed_once_and_copies_are_handed_out() {
        let docs = Documents::new(4);
        let mut first = Request::new(CREATE);
        docs.prepare(&mut first);
        let mut second = Request::new(CREATE);
        docs.prepare(&mut second);
        assert_eq!(docs.len(), 1);
        let (a, b) = (
            first.parsed_query().unwrap(),
            second.parsed_query().unwrap(),
        );
        assert_eq!(format!("{a:?}"), format!("{b:?}"));
        assert_eq!(
            format!("{a:?}"),
            format!("{:?}", async_graphql::parser::parse_query(CREATE).unwrap())
        );
    }

    #[test]
    fn texts_that_do_not_parse_are_not_kept_and_the_bound_holds() {
        let docs = Documents::new(3);
        let mut bad = Request::new("mutation { createOrder(");
        docs.prepare(&mut bad);
        assert_eq!(docs.len(), 0);
        assert!(bad.parsed_query().is_err(), "the error is still reported");
        for n in 0..10 {
            docs.prepare(&mut Request::new(format!("query q{n} {{ __typename }}")));
            assert!(docs.len() <= 3);
        }
        assert_eq!(docs.len(), 3);
        let off = Documents::new(0);
        off.prepare(&mut Request::new(CREATE));
        assert_eq!(off.len(), 0);
        let long = format!("query {{ __typename }} #{}", "x".repeat(MAX_TEXT));
        docs.prepare(&mut Request::new(long.clone()));
        assert!(!docs.lock().contains_key(long.as_str()));
    }
}
