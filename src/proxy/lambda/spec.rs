//! Config checks of a Lambda upstream: function names and ARNs, qualifiers,
//! regions, endpoints, and the HTTP-only settings it refuses.

use http::Uri;

use crate::config::{Problem, SourceFile, UpstreamKind, UpstreamSpec};

/// Problems of an `http` upstream that sets keys of a `lambda` one.
pub fn http_spec_problems(spec: &UpstreamSpec, source: &SourceFile) -> Vec<Problem> {
    if spec.kind != UpstreamKind::Http {
        return Vec::new();
    }
    let name = spec.name.get_ref();
    let keys = [
        ("function", spec.function.as_ref().map(|s| s.span())),
        ("qualifier", spec.qualifier.as_ref().map(|s| s.span())),
        ("region", spec.region.as_ref().map(|s| s.span())),
        ("endpoint_url", spec.endpoint_url.as_ref().map(|s| s.span())),
        (
            "payload_format",
            spec.payload_format.as_ref().map(|s| s.span()),
        ),
        ("retries", spec.retries.as_ref().map(|s| s.span())),
    ];
    keys.into_iter()
        .filter_map(|(key, span)| {
            span.map(|span| {
                source.problem(
                    span,
                    format!(
                        "upstream `{name}`: `{key}` is only for kind = \"lambda\" upstreams (this one is http)"
                    ),
                )
            })
        })
        .collect()
}

/// A function reference, split.
#[derive(Debug, PartialEq, Eq)]
pub(super) struct FunctionRef {
    /// What the Invoke call names (the name or the ARN without qualifier).
    pub(super) function: String,
    /// The bare function name, for labels.
    pub(super) name: String,
    pub(super) region: Option<String>,
    pub(super) qualifier: Option<String>,
}

pub(super) fn valid_name(s: &str) -> bool {
    (1..=64).contains(&s.len())
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

pub(super) fn valid_qualifier(s: &str) -> bool {
    s == "$LATEST"
        || (1..=128).contains(&s.len())
            && s.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

pub(super) fn valid_region(s: &str) -> bool {
    let parts: Vec<&str> = s.split('-').collect();
    (parts.len() >= 3)
        && s.len() <= 32
        && parts.iter().all(|p| {
            !p.is_empty()
                && p.bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
        })
        && parts
            .last()
            .is_some_and(|p| p.bytes().all(|b| b.is_ascii_digit()))
}

/// `NAME`, `ACCOUNT:function:NAME[:Q]` or
/// `arn:PARTITION:lambda:REGION:ACCOUNT:function:NAME[:Q]`.
pub(super) fn parse_function(s: &str) -> Result<FunctionRef, String> {
    let account = |a: &str| a.len() == 12 && a.bytes().all(|b| b.is_ascii_digit());
    let bad = || {
        format!(
            "`{s}` is not a function name (1-64 of [A-Za-z0-9_-]) or ARN (arn:aws:lambda:REGION:ACCOUNT:function:NAME[:QUALIFIER])"
        )
    };
    let parts: Vec<&str> = s.split(':').collect();
    let (region, acct, name, qualifier) = match parts.as_slice() {
        [name] => (None, None, *name, None),
        [acct, "function", name] => (None, Some(*acct), *name, None),
        [acct, "function", name, q] => (None, Some(*acct), *name, Some(*q)),
        ["arn", partition, "lambda", region, acct, "function", name]
            if partition.starts_with("aws") =>
        {
            (Some(*region), Some(*acct), *name, None)
        }
        [
            "arn",
            partition,
            "lambda",
            region,
            acct,
            "function",
            name,
            q,
        ] if partition.starts_with("aws") => (Some(*region), Some(*acct), *name, Some(*q)),
        _ => return Err(bad()),
    };
    if !valid_name(name) || acct.is_some_and(|a| !account(a)) {
        return Err(bad());
    }
    if let Some(r) = region
        && !valid_region(r)
    {
        return Err(format!("`{s}`: `{r}` is not an AWS region"));
    }
    if let Some(q) = qualifier
        && !valid_qualifier(q)
    {
        return Err(format!("`{s}`: `{q}` is not a version or alias"));
    }
    let function = match qualifier {
        Some(q) => s[..s.len() - q.len() - 1].to_owned(),
        None => s.to_owned(),
    };
    Ok(FunctionRef {
        function,
        name: name.to_owned(),
        region: region.map(str::to_owned),
        qualifier: qualifier.map(str::to_owned),
    })
}

pub(super) fn check_endpoint(s: &str) -> Result<(), String> {
    let uri: Uri = s
        .parse()
        .map_err(|_| format!("endpoint_url `{s}` is not a URL"))?;
    match uri.scheme_str() {
        Some("http" | "https") => {}
        _ => return Err(format!("endpoint_url `{s}` needs http:// or https://")),
    }
    let Some(authority) = uri.authority() else {
        return Err(format!("endpoint_url `{s}` needs a host"));
    };
    if authority.as_str().contains('@') {
        return Err("endpoint_url: credentials in URLs are not allowed".to_owned());
    }
    if uri.query().is_some() || !matches!(uri.path(), "" | "/") {
        return Err(format!(
            "endpoint_url `{s}` must be scheme://host[:port] only"
        ));
    }
    Ok(())
}
