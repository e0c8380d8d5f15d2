//! The OpenAPI 3.1 document (`/schema`) and Swagger UI (`/docs`).
//!
//! Each routes module declares its operations beside its routes ([`Documented`]): who may call
//! them, what they do, their success status, their query parameters and the shapes of their
//! bodies, with the schemas utoipa derives from the request and response types. The error
//! statuses follow from those (see [`error_statuses`]). `tests/tests/e2e/openapi.rs` probes the
//! router for every documented route, and schemathesis fuzzes the API from this document.

use std::collections::BTreeMap;

use utoipa::openapi::path::{
    HttpMethod, OperationBuilder, ParameterBuilder, ParameterIn, PathItem,
};
use utoipa::openapi::request_body::RequestBodyBuilder;
use utoipa::openapi::schema::{ArrayBuilder, KnownFormat, ObjectBuilder, SchemaFormat, Type};
use utoipa::openapi::security::{Http, HttpAuthScheme, SecurityRequirement, SecurityScheme};
use utoipa::openapi::tag::TagBuilder;
use utoipa::openapi::{
    ComponentsBuilder, ContentBuilder, InfoBuilder, OpenApi, OpenApiBuilder, PathsBuilder, Ref,
    RefOr, Required, ResponseBuilder, ResponsesBuilder, Schema,
};

/// Who may call an operation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Caller {
    /// No token needed.
    Anyone,
    /// Any authenticated user (object scoping and rights apply).
    User,
    /// An authenticated user, or the QueryExecutor / Solr ETL with their applicative tokens.
    UserOrApplicative,
    /// Full administrators only.
    FullAdmin,
    /// Full administrators and holders of `right_read_audit`.
    Auditor,
}

pub use Caller::{Anyone, Auditor, FullAdmin, User, UserOrApplicative};

/// The schemas a document refers to, by component name.
pub type Components = BTreeMap<String, RefOr<Schema>>;

/// Adds a type's schema (and the schemas it refers to) to the components; returns a reference.
pub type SchemaFn = fn(&mut Components) -> RefOr<Schema>;

/// [`SchemaFn`] of a type deriving `utoipa::ToSchema`.
pub fn schema_of<T: utoipa::ToSchema>(components: &mut Components) -> RefOr<Schema> {
    let name = T::name().to_string();
    let mut nested = Vec::new();
    T::schemas(&mut nested);
    components.extend(nested);
    components.insert(name.clone(), T::schema());
    Ref::from_schema_name(name).into()
}

/// The shape of a body.
#[derive(Clone, Copy)]
pub enum Shape {
    /// No body (204, 101).
    Empty,
    /// A JSON object of the given schema (any object when `None`).
    Object(Option<SchemaFn>),
    /// A JSON array of items of the given schema (any objects when `None`).
    List(Option<SchemaFn>),
    /// The `{count, next, previous, results}` envelope of a paginated list.
    Page(Option<SchemaFn>),
    /// The answer of a write: the object as the read models show it, or, when they have not
    /// caught up in time, its bare id (`X-Cohort360-Consistency: pending`).
    Written(SchemaFn),
    /// Any JSON value.
    Json,
    /// A file or text of the given media type.
    File(&'static str),
}

/// The type of a query parameter.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ParamType {
    Text,
    Integer,
    Boolean,
    DateTime,
    Date,
    Uuid,
    /// Comma-separated values.
    List,
}

/// One documented query parameter.
#[derive(Debug, Clone, Copy)]
pub struct Param {
    pub name: &'static str,
    pub kind: ParamType,
}

/// A text query parameter.
pub const fn text(name: &'static str) -> Param {
    Param {
        name,
        kind: ParamType::Text,
    }
}

/// A query parameter of type `kind`.
pub const fn param(name: &'static str, kind: ParamType) -> Param {
    Param { name, kind }
}

/// `limit`/`offset` pagination.
pub const LIMIT_OFFSET: &[Param] = &[
    param("limit", ParamType::Integer),
    param("offset", ParamType::Integer),
];

/// Page-number pagination.
pub const PAGE_NUMBER: &[Param] = &[param("page", ParamType::Integer)];

/// One documented operation.
#[derive(Clone)]
pub struct Operation {
    pub method: &'static str,
    pub path: &'static str,
    pub tag: &'static str,
    pub summary: &'static str,
    pub caller: Caller,
    /// The success status.
    pub status: u16,
    /// The success answer's body.
    pub response: Shape,
    /// The request body, if the operation reads one.
    pub request: Option<Shape>,
    /// The query parameters it reads.
    pub query: Vec<Param>,
}

/// An operation of `method` (its path is the route's it is declared with).
pub fn op(
    method: &'static str,
    tag: &'static str,
    caller: Caller,
    status: u16,
    summary: &'static str,
) -> Operation {
    let writes = matches!(method, "POST" | "PATCH" | "PUT");
    Operation {
        method,
        path: "",
        tag,
        summary,
        caller,
        status,
        response: if matches!(status, 101 | 204) {
            Shape::Empty
        } else {
            Shape::Object(None)
        },
        request: writes.then_some(Shape::Object(None)),
        query: Vec::new(),
    }
}

impl Operation {
    /// The success answer is an object of type `T`.
    pub fn returns<T: utoipa::ToSchema>(mut self) -> Self {
        self.response = Shape::Object(Some(schema_of::<T>));
        self
    }

    /// The success answer is an array of `T`.
    pub fn returns_list<T: utoipa::ToSchema>(mut self) -> Self {
        self.response = Shape::List(Some(schema_of::<T>));
        self
    }

    /// The success answer is a page of `T`.
    pub fn returns_page<T: utoipa::ToSchema>(mut self) -> Self {
        self.response = Shape::Page(Some(schema_of::<T>));
        self
    }

    /// The success answer is the written object of type `T` (or its id, pending).
    pub fn writes<T: utoipa::ToSchema>(mut self) -> Self {
        self.response = Shape::Written(schema_of::<T>);
        self
    }

    /// The success answer's shape.
    pub fn answers(mut self, shape: Shape) -> Self {
        self.response = shape;
        self
    }

    /// The request body is an object of type `T`.
    pub fn body<T: utoipa::ToSchema>(mut self) -> Self {
        self.request = Some(Shape::Object(Some(schema_of::<T>)));
        self
    }

    /// The request body's shape (`None`: the operation reads no body).
    pub fn reads(mut self, shape: Option<Shape>) -> Self {
        self.request = shape;
        self
    }

    /// Query parameters it reads.
    pub fn query(mut self, params: &[Param]) -> Self {
        self.query.extend_from_slice(params);
        self
    }
}

/// A router and the documentation of its operations, built side by side.
pub struct Documented<S = crate::state::AppState> {
    pub router: axum::Router<S>,
    pub operations: Vec<Operation>,
}

impl<S: Clone + Send + Sync + 'static> Default for Documented<S> {
    fn default() -> Self {
        Self {
            router: axum::Router::new(),
            operations: Vec::new(),
        }
    }
}

impl<S: Clone + Send + Sync + 'static> Documented<S> {
    pub fn new() -> Self {
        Self::default()
    }

    /// Serves `path` with `handlers`, documented by `operations` (one per method).
    pub fn route(
        mut self,
        path: &'static str,
        handlers: axum::routing::MethodRouter<S>,
        operations: impl IntoIterator<Item = Operation>,
    ) -> Self {
        self.router = self.router.route(path, handlers);
        self.operations
            .extend(operations.into_iter().map(|o| Operation { path, ..o }));
        self
    }

    /// Adds another module's routes and operations.
    pub fn merge(mut self, other: Documented<S>) -> Self {
        self.router = self.router.merge(other.router);
        self.operations.extend(other.operations);
        self
    }
}

/// The error statuses an operation may answer, from who may call it and what it does.
pub fn error_statuses(operation: &Operation) -> Vec<u16> {
    let mut statuses = Vec::new();
    let writes = operation.method != "GET";
    if writes || operation.path.contains("{") || operation.summary.contains('(') {
        statuses.push(400);
    }
    if operation.caller != Anyone || operation.path == "/metrics" {
        statuses.push(401);
    }
    if operation.caller != Anyone {
        statuses.push(403);
    }
    if operation.path.contains('{') {
        statuses.push(404);
    }
    if writes {
        statuses.push(409);
    }
    // Writes are refused during maintenance; anything may meet an unavailable database.
    statuses.push(503);
    statuses
}

fn http_method(method: &str) -> HttpMethod {
    match method {
        "POST" => HttpMethod::Post,
        "PUT" => HttpMethod::Put,
        "PATCH" => HttpMethod::Patch,
        "DELETE" => HttpMethod::Delete,
        _ => HttpMethod::Get,
    }
}

fn status_text(status: u16) -> &'static str {
    match status {
        101 => "Switching protocols",
        200 => "OK",
        201 => "Created",
        204 => "No content",
        400 => "Invalid input (`invalid_field`, `invalid_json`, …; `field` names the field)",
        401 => "Not authenticated (`not_authenticated`, `token_rejected`, …)",
        403 => "Not allowed (`permission_denied`, …)",
        404 => "Not found, or not visible to the caller (`*_not_found`)",
        409 => "Conflict (`concurrent_modification`, `*_already_exists`, …)",
        503 => "Maintenance (`maintenance`) or a dependency unavailable (`service_unavailable`)",
        _ => "",
    }
}

fn caller_text(caller: Caller) -> &'static str {
    match caller {
        Anyone => "No token needed.",
        User => "Any authenticated user; objects are scoped to their owner and rights apply.",
        UserOrApplicative => {
            "An authenticated user, or the QueryExecutor / Solr ETL with their applicative token."
        }
        FullAdmin => "Full administrators only.",
        Auditor => "Full administrators and holders of `right_read_audit` (an extension right).",
    }
}

/// The schema of a body of `shape`, its schemas added to `components`.
fn body_schema(shape: Shape, components: &mut Components) -> Option<(&'static str, RefOr<Schema>)> {
    let any_object = || -> RefOr<Schema> { ObjectBuilder::new().schema_type(Type::Object).into() };
    let item = |f: Option<SchemaFn>, components: &mut Components| match f {
        Some(f) => f(components),
        None => any_object(),
    };
    let json = "application/json";
    Some(match shape {
        Shape::Empty => return None,
        Shape::Object(f) => (json, item(f, components)),
        Shape::List(f) => (json, ArrayBuilder::new().items(item(f, components)).into()),
        Shape::Page(f) => {
            let link = || {
                ObjectBuilder::new()
                    .schema_type(utoipa::openapi::schema::SchemaType::from_iter([
                        Type::String,
                        Type::Null,
                    ]))
                    .format(Some(SchemaFormat::Custom("uri".into())))
            };
            let page = ObjectBuilder::new()
                .schema_type(Type::Object)
                .property("count", ObjectBuilder::new().schema_type(Type::Integer))
                .required("count")
                .property("next", link())
                .property("previous", link())
                .property("results", ArrayBuilder::new().items(item(f, components)))
                .required("results");
            (json, page.into())
        }
        Shape::Written(f) => {
            let pending = ObjectBuilder::new()
                .schema_type(Type::Object)
                .description(Some(
                    "The write is stored but the read models had not caught up: the object's id \
                     (`uuid`, or `id` for integer-numbered objects), with the header \
                     `X-Cohort360-Consistency: pending`.",
                ))
                .property(
                    "uuid",
                    ObjectBuilder::new()
                        .schema_type(Type::String)
                        .format(Some(SchemaFormat::Custom("uuid".into()))),
                )
                .property(
                    "id",
                    ObjectBuilder::new().schema_type(
                        utoipa::openapi::schema::SchemaType::from_iter([
                            Type::Integer,
                            Type::String,
                        ]),
                    ),
                );
            (
                json,
                utoipa::openapi::schema::AnyOfBuilder::new()
                    .item(f(components))
                    .item(pending)
                    .into(),
            )
        }
        Shape::Json => (
            json,
            ObjectBuilder::new()
                .schema_type(utoipa::openapi::schema::SchemaType::AnyValue)
                .into(),
        ),
        Shape::File(media) => (
            media,
            ObjectBuilder::new()
                .schema_type(Type::String)
                .format(Some(SchemaFormat::KnownFormat(KnownFormat::Binary)))
                .into(),
        ),
    })
}

/// The schema of a query parameter.
fn param_schema(kind: ParamType) -> ObjectBuilder {
    let string = ObjectBuilder::new().schema_type(Type::String);
    match kind {
        ParamType::Text | ParamType::List => string,
        ParamType::Integer => ObjectBuilder::new().schema_type(Type::Integer),
        ParamType::Boolean => ObjectBuilder::new().schema_type(Type::Boolean),
        ParamType::DateTime => {
            string.format(Some(SchemaFormat::KnownFormat(KnownFormat::DateTime)))
        }
        ParamType::Date => string.format(Some(SchemaFormat::KnownFormat(KnownFormat::Date))),
        ParamType::Uuid => string.format(Some(SchemaFormat::Custom("uuid".into()))),
    }
}

fn operation_id(operation: &Operation) -> String {
    let path: String = operation
        .path
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
        .collect();
    format!(
        "{}{}",
        operation.method.to_ascii_lowercase(),
        path.trim_end_matches('_')
    )
}

/// The OpenAPI 3.1 document of `operations` (all of them: `routes::documented`).
pub fn document(operations: &[Operation]) -> OpenApi {
    let mut components = Components::new();
    let mut paths = PathsBuilder::new();
    for operation in operations {
        let mut success = ResponseBuilder::new().description(status_text(operation.status));
        if let Some((media, schema)) = body_schema(operation.response, &mut components) {
            success = success.content(media, ContentBuilder::new().schema(Some(schema)).build());
        }
        let mut responses = ResponsesBuilder::new().response(operation.status.to_string(), success);
        for status in error_statuses(operation) {
            responses = responses.response(
                status.to_string(),
                ResponseBuilder::new()
                    .description(status_text(status))
                    .content(
                        "application/json",
                        ContentBuilder::new()
                            .schema(Some(Ref::from_schema_name("Error")))
                            .build(),
                    ),
            );
        }
        let mut builder = OperationBuilder::new()
            .tag(operation.tag)
            .summary(Some(operation.summary))
            .description(Some(caller_text(operation.caller)))
            .operation_id(Some(operation_id(operation)))
            .responses(responses.build());
        for segment in operation.path.split('/') {
            if let Some(name) = segment.strip_prefix('{').and_then(|s| s.strip_suffix('}')) {
                builder = builder.parameter(
                    ParameterBuilder::new()
                        .name(name)
                        .parameter_in(ParameterIn::Path)
                        .required(Required::True)
                        .schema(Some(ObjectBuilder::new().schema_type(Type::String))),
                );
            }
        }
        for param in &operation.query {
            builder = builder.parameter(
                ParameterBuilder::new()
                    .name(param.name)
                    .parameter_in(ParameterIn::Query)
                    .required(Required::False)
                    .schema(Some(param_schema(param.kind))),
            );
        }
        if let Some((media, schema)) = operation
            .request
            .and_then(|shape| body_schema(shape, &mut components))
        {
            builder = builder.request_body(Some(
                RequestBodyBuilder::new()
                    .content(media, ContentBuilder::new().schema(Some(schema)).build())
                    .build(),
            ));
        }
        if operation.caller != Anyone {
            builder = builder.security(SecurityRequirement::new("bearer", Vec::<String>::new()));
        }
        paths = paths.path(
            operation.path,
            PathItem::new(http_method(operation.method), builder),
        );
    }
    let error = ObjectBuilder::new()
        .schema_type(Type::Object)
        .description(Some(
            "Every error: a stable machine code, a human message and, for invalid input, the \
             field. Codes are listed in the README (\"Error codes\").",
        ))
        .property("code", ObjectBuilder::new().schema_type(Type::String))
        .required("code")
        .property("message", ObjectBuilder::new().schema_type(Type::String))
        .required("message")
        .property("field", ObjectBuilder::new().schema_type(Type::String));
    let mut tags: Vec<&str> = operations.iter().map(|o| o.tag).collect();
    tags.sort_unstable();
    tags.dedup();
    OpenApiBuilder::new()
        .info(
            InfoBuilder::new()
                .title("Cohort360 back-end (event-sourced)")
                .version(env!("CARGO_PKG_VERSION"))
                .description(Some(
                    "Wire-compatible with the Cohort360 back-end. Paths keep the mandatory \
                     trailing slash. Bearer tokens are our JWTs (`AuthorizationMethod: JWT`) or \
                     OIDC access tokens (`AuthorizationMethod: OIDC`).",
                )),
        )
        .paths(paths.build())
        .components(Some(
            ComponentsBuilder::new()
                .schemas_from_iter(components)
                .schema("Error", error)
                .security_scheme(
                    "bearer",
                    SecurityScheme::Http(Http::new(HttpAuthScheme::Bearer)),
                )
                .build(),
        ))
        .tags(Some(
            tags.into_iter().map(|t| TagBuilder::new().name(t).build()),
        ))
        .build()
}

/// Swagger UI at `/docs`, reading the document of `operations` at `/schema`.
pub fn routes(operations: &[Operation]) -> utoipa_swagger_ui::SwaggerUi {
    utoipa_swagger_ui::SwaggerUi::new("/docs").url("/schema", document(operations))
}
