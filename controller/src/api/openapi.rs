//! The OpenAPI 3.1 document of the REST API, made from the route table: each route carries its
//! documentation (summary, query parameters, request body, answer) beside its handler and access
//! level, and the schemas come from `cofre-api`'s wire types (utoipa). Served at
//! `/api/v1/openapi.json`; a test proves every route of the table is in it with its request,
//! answers and security.

use std::sync::OnceLock;

use axum::http::Method;
use cofre_api as api;
use utoipa::openapi::path::{
    HttpMethod, OperationBuilder, Parameter, ParameterBuilder, ParameterIn, PathsBuilder,
};
use utoipa::openapi::request_body::RequestBodyBuilder;
use utoipa::openapi::response::{ResponseBuilder, ResponsesBuilder};
use utoipa::openapi::schema::{ArrayBuilder, ComponentsBuilder, ObjectBuilder, Schema, Type};
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityRequirement, SecurityScheme};
use utoipa::openapi::{ContentBuilder, InfoBuilder, OpenApi, OpenApiBuilder, Ref, RefOr, Required};
use utoipa::{IntoParams, ToSchema};

use super::{Access, RouteDef, Scope};

/// Schemas collected while the document is made (components/schemas).
pub type Schemas = Vec<(String, RefOr<Schema>)>;
/// A schema of a wire type, registering it (and what it refers to) in the components.
pub type SchemaFn = fn(&mut Schemas) -> RefOr<Schema>;
/// The query parameters of a route.
pub type ParamsFn = fn() -> Vec<Parameter>;

/// What a route answers when it succeeds.
#[derive(Clone, Copy)]
pub enum Answer {
    /// Not documented yet: the coverage test refuses it.
    Undocumented,
    Json(u16, SchemaFn),
    /// 204, no body.
    Empty,
    Text,
    /// A file in one of these media types (a script, a binary, its checksum).
    Files(&'static [&'static str]),
    Csv(SchemaFn),
    Tar,
}

/// A route's documentation.
#[derive(Clone, Copy)]
pub struct Doc {
    pub summary: &'static str,
    pub query: Option<ParamsFn>,
    pub body: Option<SchemaFn>,
    pub answer: Answer,
    /// The edit honours `If-Match` (412 on a stale copy).
    pub if_match: bool,
}

impl Default for Doc {
    fn default() -> Self {
        Self { summary: "", query: None, body: None, answer: Answer::Undocumented, if_match: false }
    }
}

fn header(name: &str, description: &str) -> Parameter {
    ParameterBuilder::new()
        .name(name)
        .parameter_in(ParameterIn::Header)
        .required(Required::False)
        .description(Some(description))
        .schema(Some(ObjectBuilder::new().schema_type(Type::String)))
        .build()
}

/// `T` by reference (`#/components/schemas/T`).
pub fn one<T: ToSchema>(s: &mut Schemas) -> RefOr<Schema> {
    let name = T::name().to_string();
    if !s.iter().any(|(n, _)| *n == name) {
        s.push((name.clone(), T::schema()));
        T::schemas(s);
    }
    Ref::from_schema_name(name).into()
}

fn array_of(item: RefOr<Schema>) -> ArrayBuilder {
    ArrayBuilder::new().items(item)
}

/// `{"items": [T]}`.
pub fn list<T: ToSchema>(s: &mut Schemas) -> RefOr<Schema> {
    ObjectBuilder::new().property("items", array_of(one::<T>(s))).required("items").into()
}

/// `{"items": [T], "next_cursor": string|null}`.
pub fn page<T: ToSchema>(s: &mut Schemas) -> RefOr<Schema> {
    ObjectBuilder::new()
        .property("items", array_of(one::<T>(s)))
        .required("items")
        .property(
            "next_cursor",
            ObjectBuilder::new()
                .schema_type(utoipa::openapi::schema::SchemaType::Array(vec![Type::String, Type::Null]))
                .description(Some("Pass as `cursor` for the next page; null on the last page.")),
        )
        .into()
}

/// Any JSON object (answers whose shape is described in the summary).
pub fn object(_: &mut Schemas) -> RefOr<Schema> {
    ObjectBuilder::new().into()
}

pub fn params<T: IntoParams>() -> Vec<Parameter> {
    T::into_params(|| Some(ParameterIn::Query))
}

fn method(m: &Method) -> HttpMethod {
    match *m {
        Method::POST => HttpMethod::Post,
        Method::PUT => HttpMethod::Put,
        Method::DELETE => HttpMethod::Delete,
        Method::PATCH => HttpMethod::Patch,
        _ => HttpMethod::Get,
    }
}

fn problem(s: &mut Schemas, why: &str) -> utoipa::openapi::Response {
    ResponseBuilder::new()
        .description(why)
        .content(
            "application/problem+json",
            ContentBuilder::new().schema(Some(one::<api::Problem>(s))).build(),
        )
        .build()
}

fn who(access: Access, scope: Scope) -> String {
    let role = match access {
        Access::Public => return "Anyone (no token).".into(),
        Access::Read => "any signed-in role (auditor and up)",
        Access::Operate => "operators and admins",
        Access::Admin => "admins",
    };
    let scope = match scope {
        Scope::Group => "users limited to a group reach only their group's machines (others answer 404)",
        Scope::Fleet if access == Access::Read => "users limited to a group may read it",
        Scope::Fleet => "fleet-wide users only",
        Scope::FleetOnly => "fleet-wide users only",
    };
    format!("Access: {role}; {scope}. Read-only API tokens may only GET.")
}

/// The document for `routes` (the route table).
pub fn document(routes: &[(RouteDef, Doc)]) -> OpenApi {
    let mut schemas = Schemas::new();
    let mut paths = PathsBuilder::new().build();
    for (r, d) in routes {
        let mut op = OperationBuilder::new()
            .summary(Some(d.summary))
            .description(Some(who(r.access, r.scope)))
            .operation_id(Some(operation_id(r)))
            .tag(tag(r.path));
        for name in path_params(r.path) {
            op = op.parameter(
                ParameterBuilder::new()
                    .name(name)
                    .parameter_in(ParameterIn::Path)
                    .required(Required::True)
                    .schema(Some(ObjectBuilder::new().schema_type(Type::String).format(Some(
                        utoipa::openapi::schema::SchemaFormat::KnownFormat(
                            utoipa::openapi::schema::KnownFormat::Uuid,
                        ),
                    ))))
                    .build(),
            );
        }
        if let Some(q) = d.query {
            op = op.parameters(Some(q()));
        }
        if r.method == Method::POST && r.access != Access::Public {
            op = op.parameter(header(
                "Idempotency-Key",
                "Retries with the same key and request get the first answer again (kept a day).",
            ));
        }
        if d.if_match {
            op = op.parameter(header("If-Match", "The ETag of the copy this edit is made from."));
        }
        if let Some(b) = d.body {
            op = op.request_body(Some(
                RequestBodyBuilder::new()
                    .content("application/json", ContentBuilder::new().schema(Some(b(&mut schemas))).build())
                    .required(Some(Required::True))
                    .build(),
            ));
        }
        let mut responses = ResponsesBuilder::new();
        responses = match d.answer {
            Answer::Undocumented => responses,
            Answer::Json(status, f) => responses.response(
                status.to_string(),
                ResponseBuilder::new()
                    .description("Success.")
                    .content("application/json", ContentBuilder::new().schema(Some(f(&mut schemas))).build()),
            ),
            Answer::Empty => responses.response("204", ResponseBuilder::new().description("Done; no body.")),
            Answer::Text => responses.response(
                "200",
                ResponseBuilder::new().description("Plain text.").content(
                    "text/plain",
                    ContentBuilder::new()
                        .schema(Some(ObjectBuilder::new().schema_type(Type::String)))
                        .build(),
                ),
            ),
            Answer::Files(types) => {
                let mut answer = ResponseBuilder::new().description("A file.");
                for t in types {
                    answer = answer.content(
                        *t,
                        ContentBuilder::new()
                            .schema(Some(ObjectBuilder::new().schema_type(Type::String)))
                            .build(),
                    );
                }
                responses.response("200", answer)
            }
            Answer::Csv(f) => responses.response(
                "200",
                ResponseBuilder::new()
                    .description("JSON, or CSV with `format=csv`.")
                    .content("application/json", ContentBuilder::new().schema(Some(f(&mut schemas))).build())
                    .content(
                        "text/csv",
                        ContentBuilder::new()
                            .schema(Some(ObjectBuilder::new().schema_type(Type::String)))
                            .build(),
                    ),
            ),
            Answer::Tar => responses.response(
                "200",
                ResponseBuilder::new().description("A tar archive.").content(
                    "application/x-tar",
                    ContentBuilder::new()
                        .schema(Some(
                            ObjectBuilder::new()
                                .schema_type(Type::String)
                                .content_media_type("application/x-tar"),
                        ))
                        .build(),
                ),
            ),
        };
        responses = responses.response("400", problem(&mut schemas, "Malformed request (problem+json)."));
        if d.body.is_some() || d.query.is_some() {
            responses = responses
                .response("422", problem(&mut schemas, "Invalid fields, each named (problem+json)."));
        }
        if r.access == Access::Public {
            op = op.securities(Some(Vec::<SecurityRequirement>::new()));
            if r.path.contains("/auth/") {
                responses = responses
                    .response("401", problem(&mut schemas, "Wrong credentials or token."))
                    .response("429", problem(&mut schemas, "Too many failed attempts; see Retry-After."));
            }
        } else {
            op = op.security(SecurityRequirement::new("bearer", Vec::<String>::new()));
            responses = responses
                .response("401", problem(&mut schemas, "No valid token."))
                .response("403", problem(&mut schemas, "The token's role or scope does not allow this."));
        }
        if r.path.contains('{') {
            responses =
                responses.response("404", problem(&mut schemas, "No such resource (or not visible to you)."));
        }
        if d.if_match {
            responses = responses.response("412", problem(&mut schemas, "Changed meanwhile: read it again."));
        }
        if matches!(r.method, Method::POST | Method::PUT | Method::DELETE) && r.access != Access::Public {
            responses = responses.response("409", problem(&mut schemas, "Conflicts with the current state."));
        }
        // Every other error (405, 413, 415, 503 …) is problem+json too.
        responses = responses.response("default", problem(&mut schemas, "Any other error (problem+json)."));
        op = op.responses(responses.build());
        paths.add_path_operation(r.path, vec![method(&r.method)], op.build());
    }
    let components = ComponentsBuilder::new()
        .schemas_from_iter(schemas)
        .security_scheme(
            "bearer",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .bearer_format("JWT or cofre_pat_… API token")
                    .build(),
            ),
        )
        .build();
    OpenApiBuilder::new()
        .info(InfoBuilder::new().title("Cofre").version(env!("CARGO_PKG_VERSION")).description(Some(
            "Cofre's REST API: a fleet of machines backed up with restic. Errors are RFC 9457 \
                     problem+json. Lists are `{\"items\": […]}`; long lists are pages with `next_cursor`.",
        )))
        .paths(paths)
        .components(Some(components))
        .build()
}

/// The document of this controller's route table, made once.
pub fn served() -> &'static OpenApi {
    static DOC: OnceLock<OpenApi> = OnceLock::new();
    DOC.get_or_init(|| document(&super::documented_routes()))
}

/// `{id}`, `{assignment}` … in a path template.
pub fn path_params(path: &str) -> Vec<&str> {
    path.split('/').filter_map(|seg| seg.strip_prefix('{').and_then(|s| s.strip_suffix('}'))).collect()
}

fn tag(path: &str) -> String {
    let rest = path.strip_prefix("/api/v1/").unwrap_or("health");
    rest.split('/').next().unwrap_or("health").to_string()
}

/// `get_api_v1_machines_id_jobs`: unique per route, stable.
pub fn operation_id(r: &RouteDef) -> String {
    let path: String = r
        .path
        .trim_start_matches('/')
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
        .collect();
    let path = path.split('_').filter(|s| !s.is_empty()).collect::<Vec<_>>().join("_");
    format!("{}_{path}", r.method.as_str().to_ascii_lowercase())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn refs(v: &serde_json::Value, out: &mut Vec<String>) {
        match v {
            serde_json::Value::Object(m) => {
                for (k, v) in m {
                    match (k.as_str(), v) {
                        ("$ref", serde_json::Value::String(r)) => out.push(r.clone()),
                        _ => refs(v, out),
                    }
                }
            }
            serde_json::Value::Array(a) => a.iter().for_each(|v| refs(v, out)),
            _ => {}
        }
    }

    /// Every route of the table is in the document with its summary, its path parameters, its
    /// body when it takes one, its success answer, its errors and its security; every schema
    /// referred to exists; operation ids are unique.
    #[test]
    fn every_route_is_documented_with_its_request_answers_and_security() {
        let routes = crate::api::documented_routes();
        let doc = serde_json::to_value(document(&routes)).expect("document");
        assert_eq!(doc["openapi"], "3.1.0");
        let mut ids = std::collections::HashSet::new();
        for (r, d) in &routes {
            let what = format!("{} {}", r.method, r.path);
            assert!(!d.summary.is_empty(), "{what}: no summary");
            assert!(!matches!(d.answer, Answer::Undocumented), "{what}: its answer is not documented");
            let op = &doc["paths"][r.path][r.method.as_str().to_ascii_lowercase()];
            assert!(op.is_object(), "{what}: not in the document");
            assert!(
                ids.insert(op["operationId"].as_str().unwrap_or_default().to_string()),
                "{what}: duplicate id"
            );
            let in_path: Vec<&str> = op["parameters"]
                .as_array()
                .map(|ps| {
                    ps.iter().filter(|p| p["in"] == "path").filter_map(|p| p["name"].as_str()).collect()
                })
                .unwrap_or_default();
            assert_eq!(in_path, path_params(r.path), "{what}: path parameters");
            assert_eq!(op["requestBody"].is_object(), d.body.is_some(), "{what}: request body");
            let responses = op["responses"].as_object().expect("responses");
            assert!(responses.keys().any(|k| k.starts_with('2')), "{what}: no success answer");
            assert!(responses.contains_key("400"), "{what}: no error answer");
            match r.access {
                Access::Public => assert_eq!(op["security"], serde_json::json!([]), "{what}: public"),
                _ => {
                    assert_eq!(op["security"], serde_json::json!([{"bearer": []}]), "{what}: security");
                    assert!(
                        responses.contains_key("401") && responses.contains_key("403"),
                        "{what}: 401/403"
                    );
                }
            }
        }
        // Nothing in the document that the table does not have.
        let operations: usize = doc["paths"]
            .as_object()
            .expect("paths")
            .values()
            .map(|p| p.as_object().map_or(0, |o| o.len()))
            .sum();
        assert_eq!(operations, routes.len());
        let mut all = Vec::new();
        refs(&doc, &mut all);
        assert!(all.len() > 50, "schemas are referred to");
        for r in all {
            let name = r.strip_prefix("#/components/schemas/").expect("a schema reference");
            assert!(doc["components"]["schemas"][name].is_object(), "{name} is referred to but not defined");
        }
        for name in
            ["Machine", "Job", "Policy", "PolicySpec", "Problem", "Session", "NewRepository", "Report"]
        {
            assert!(doc["components"]["schemas"][name].is_object(), "{name} missing");
        }
        // Write-only secrets are in requests, never in answers.
        let repo = &doc["components"]["schemas"]["Repository"]["properties"];
        assert!(repo["password"].is_null() && repo["has_password"].is_object());
    }
}
