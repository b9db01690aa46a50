//! Check 1 of [`super::bundle`]: the manifest lists every file with its SHA-256 and length,
//! and no file is unlisted.
//!
//! Why apart: it is the first gate (a damaged or partial copy) and every other check reads
//! the bundle's files through [`text`], which reports a missing or non-UTF-8 file once.

use std::collections::BTreeSet;

use super::problem::BundleProblem;
use crate::files::bundle::{Bundle, Manifest, BUNDLE_FORMAT, MANIFEST};

pub(super) fn text<'a>(
    b: &'a Bundle,
    path: &str,
    problems: &mut Vec<BundleProblem>,
) -> Option<&'a str> {
    match b.get(path) {
        None => {
            problems.push(BundleProblem::MissingFile(path.to_string()));
            None
        }
        Some(bytes) => match std::str::from_utf8(bytes) {
            Ok(t) => Some(t),
            Err(_) => {
                problems.push(BundleProblem::Malformed {
                    file: path.to_string(),
                    reason: "not utf-8 text".into(),
                });
                None
            }
        },
    }
}

pub(super) fn check_manifest(b: &Bundle, problems: &mut Vec<BundleProblem>) {
    let Some(t) = text(b, MANIFEST, problems) else {
        return;
    };
    let m: Manifest = match serde_json::from_str(t) {
        Ok(m) => m,
        Err(e) => {
            problems.push(BundleProblem::Manifest(e.to_string()));
            return;
        }
    };
    if m.format != BUNDLE_FORMAT {
        problems.push(BundleProblem::Manifest(format!(
            "format {:?} is not {BUNDLE_FORMAT:?}",
            m.format
        )));
    }
    let mut listed = BTreeSet::new();
    for f in &m.files {
        listed.insert(f.path.as_str());
        match b.get(&f.path) {
            None => problems.push(BundleProblem::Manifest(format!(
                "{} is listed but missing",
                f.path
            ))),
            Some(bytes) => {
                if hex::encode(hashcore::sha256(bytes)) != f.sha256 || bytes.len() as u64 != f.bytes
                {
                    problems.push(BundleProblem::Manifest(format!(
                        "{}: sha-256 or length differs from the manifest",
                        f.path
                    )));
                }
            }
        }
    }
    for path in b.files().keys() {
        if path != MANIFEST && !listed.contains(path.as_str()) {
            problems.push(BundleProblem::Manifest(format!("{path} is not listed")));
        }
    }
}
