//! The `[[openapi]]` tables of a policy file: routes imported from an
//! OpenAPI document (compiled by [`crate::openapi`]).

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde::Deserialize;
use toml::Spanned;

use super::{AuthSpec, ByteSize, UnderscoreHeaders};

/// An OpenAPI document whose operations become routes.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OpenApiSpec {
    /// Unique name; each route is named `NAME.operationId` (or
    /// `NAME.METHOD /path` for an operation without an id).
    pub name: Spanned<String>,
    /// The document (YAML, or JSON for `*.json`), relative to this policy
    /// file. `$ref`s to files next to it are followed; remote refs are
    /// refused.
    pub document: Spanned<PathBuf>,
    /// The upstream every operation forwards to.
    pub upstream: Spanned<String>,
    /// Match only this host (default: any).
    pub host: Option<Spanned<String>>,
    /// Prepended to every document path, e.g. `/v3` (default: none; the
    /// document's `servers` are not used).
    pub path_prefix: Option<Spanned<String>>,
    /// Auth for operations whose document declares no `security` at all
    /// (neither on the operation nor at the top): `"none"` (default),
    /// `"api_key"`, `"jwt"` or a list.
    pub auth: Option<Spanned<AuthSpec>>,
    /// JWT issuers (by name) accepted where an operation maps to JWT
    /// (http bearer, oauth2, openIdConnect); empty (default): any declared.
    #[serde(default)]
    pub jwt_issuers: Vec<Spanned<String>>,
    /// Rate-limit policies (by name) for every operation (default: none
    /// besides global ones).
    #[serde(default)]
    pub rate_limits: Vec<Spanned<String>>,
    /// Largest request body (default from `[defaults]`).
    pub max_body: Option<ByteSize>,
    /// Check upstream responses against the document's declared statuses,
    /// media types and JSON body schemas, log and count mismatches, never
    /// block (default `false`).
    #[serde(default)]
    pub validate_responses: bool,
    /// Turn unsupported constructs (request media types that cannot be
    /// validated, parameter styles, cookie parameters, scope lists that
    /// differ between alternatives) from errors into warnings, each handled
    /// the strict way (see docs/src/openapi.md). Refused refs and security schemes
    /// that cannot be mapped stay errors. Default `false`.
    #[serde(default)]
    pub allow_unsupported: bool,
    /// Overrides `[server] underscores_in_headers` for these routes: set
    /// `"allow"` when the document declares a header with `_` (the
    /// petstore's `api_key`), which is dropped by default.
    pub underscores_in_headers: Option<UnderscoreHeaders>,
    /// Per-operation overrides, by `operationId`.
    #[serde(default)]
    pub operations: BTreeMap<String, Spanned<OperationOverride>>,
}

/// Settings that replace what the document says for one operation.
#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct OperationOverride {
    /// Replaces the auth mapped from `security` (`"none"`, `"api_key"`,
    /// `"jwt"` or a list).
    pub auth: Option<Spanned<AuthSpec>>,
    /// The API-key header (with `auth` including `api_key`).
    pub api_key_header: Option<Spanned<String>>,
    /// Replaces the JWT issuers.
    pub jwt_issuers: Option<Vec<Spanned<String>>>,
    /// Replaces the scopes mapped from `security`.
    pub scopes: Option<Vec<String>>,
    /// Rate-limit policies added for this operation.
    #[serde(default)]
    pub rate_limits: Vec<Spanned<String>>,
    /// Largest request body for this operation.
    pub max_body: Option<ByteSize>,
    /// Do not route this operation (requests get 404/405).
    #[serde(default)]
    pub skip: bool,
}
