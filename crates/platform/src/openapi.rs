//! OpenAPI documents built from the collection tables (so the contract cannot drift
//! from the code that serves it), merged with each service's `#[utoipa::path]`
//! custom operations.

use utoipa::openapi::path::{
    HttpMethod, OperationBuilder, ParameterBuilder, ParameterIn, PathItemBuilder,
};
use utoipa::openapi::request_body::RequestBodyBuilder;
use utoipa::openapi::schema::{ObjectBuilder, Type};
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityRequirement, SecurityScheme};
use utoipa::openapi::{
    ComponentsBuilder, ContentBuilder, InfoBuilder, OpenApi, OpenApiBuilder, PathsBuilder, Ref,
    RefOr, ResponseBuilder, Schema,
};

use serde_json::{json, Value};

use crate::collection::{Collection, Field, Kind, Operation};
use crate::query::MAX_LIMIT;

/// A schema written as JSON Schema (OpenAPI 3.1), which says what utoipa's
/// builders cannot (`type: [string, null]`, `anyOf`, `prefixItems`) in one place.
/// Custom operations use it for bodies their handlers parse by hand (implement
/// `utoipa::PartialSchema` with it), with [`field_input`] for their fields.
pub fn schema(v: Value) -> RefOr<Schema> {
    serde_json::from_value(v).expect("a hand-written schema is a valid utoipa schema")
}

/// Any JSON value (utoipa reads no `{}` back, so every type is listed).
fn any(description: &str) -> Value {
    json!({"type": ["null", "boolean", "object", "array", "number", "string"], "description": description})
}

/// `type` plus `null` when the value may be null, for schemas and enums alike.
fn nullable(mut v: Value, null: bool) -> Value {
    if !null {
        return v;
    }
    if let Some(t) = v.get("type").cloned() {
        v["type"] = json!([t, "null"]);
    } else if v.get("anyOf").is_some() {
        v["anyOf"]
            .as_array_mut()
            .expect("anyOf is an array")
            .push(json!({"type": "null"}));
        return v;
    }
    if let Some(e) = v.get_mut("enum").and_then(Value::as_array_mut) {
        e.push(Value::Null);
    }
    v
}

/// The characters the validator trims and counts as blank: Unicode White_Space,
/// as Rust's `char::is_whitespace` has it, spelled out for a character class
/// (`\\s` differs between regex dialects: ECMA-262 has U+FEFF and not U+0085,
/// Python has U+001C to U+001F). Use it as `[{WS}]` or `[^{WS}]`.
pub const WS: &str =
    "\\t\\n\\u000b\\f\\r \\u0085\\u00a0\\u1680\\u2000-\\u200a\\u2028\\u2029\\u202f\\u205f\\u3000";

/// Text the validator accepts: no NUL (Postgres stores none) and, for a required
/// field, something besides whitespace (it is trimmed, and blank is "required").
const NO_NUL: &str = "^[^\\u0000]*$";
fn not_blank() -> String {
    format!("^[^\\u0000]*[^{WS}\\u0000][^\\u0000]*$")
}
/// What Kenyan numbers look like in every form the API reads (07.., 01.., 2547..,
/// +2547..); libphonenumber's Kenyan mobile ranges. Any valid international
/// number in E.164 is accepted too, but no pattern can say which are valid.
const KE_PHONE: &str = "^(\\+254|254|0)(7[0-9]{2}|10[0-8]|11[0-7])[0-9]{6}$";
const E164: &str = "^\\+[1-9][0-9]{6,14}$";
/// The email check the validator applies: one `@`, a dotted domain, no spaces.
fn email() -> String {
    let c = format!("@{WS},;<>\\u0000");
    format!("^[^{c}]{{1,64}}@[^{c}.][^{c}]*\\.[^{c}]*[^{c}.]$")
}
const UUID: &str = "^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$";
/// Money on input: a decimal string with at most two places, below 10^12.
const MONEY_IN: &str = "^-?[0-9]{1,12}(\\.[0-9]{1,2})?$";
const MONEY_OUT: &str = "^-?[0-9]{1,12}\\.[0-9]{2}$";

/// A field as documents carry it: null when it is not required and has no value.
fn out_schema(f: &Field) -> Value {
    let v = match f.kind {
        Kind::Text { max } => json!({"type": "string", "maxLength": max}),
        // The validator's rule, not RFC 5322's: a `format` would lie both ways.
        Kind::Email => {
            json!({"type": "string", "pattern": email(), "description": "An email address"})
        }
        Kind::Phone => json!({"type": "string", "pattern": E164, "description": "E.164"}),
        Kind::Int { min, max } => json!({"type": "integer", "minimum": min, "maximum": max}),
        Kind::Money => json!({"type": "string", "pattern": MONEY_OUT,
            "description": "KES, exact decimal with two places, e.g. \"1500.00\""}),
        Kind::Bool => json!({"type": "boolean"}),
        Kind::Date => json!({"type": "string", "format": "date"}),
        Kind::Timestamp => json!({"type": "string", "format": "date-time"}),
        Kind::Select(opts) => json!({"type": "string", "enum": opts}),
        Kind::Relation => json!({"type": "string", "format": "uuid"}),
        Kind::Relations => json!({"type": "array", "items": {"type": "string", "format": "uuid"}}),
        Kind::Point => json!({"type": "array", "minItems": 2, "maxItems": 2,
            "items": {"type": "number"}, "description": "[longitude, latitude]"}),
        Kind::Json => return any("JSON"),
        Kind::Password => json!({"type": "string", "format": "password"}),
    };
    // Checkbox columns are NOT NULL (false, or the field's default).
    nullable(v, !f.required && f.kind != Kind::Bool)
}

/// Money above zero (a price, an amount paid), for `Field::schema`.
pub fn positive_money() -> Value {
    json!({"anyOf": [
        {"type": "string", "pattern": "^(0*[1-9][0-9]{0,11}(\\.[0-9]{1,2})?|0{1,12}\\.([1-9][0-9]?|0[1-9]))$"},
        {"type": "integer", "minimum": 1, "maximum": 999_999_999_999i64}
    ], "description": "KES above 0: a decimal string with at most two places, or a whole number"})
}

/// Money of zero or more (a commission), for `Field::schema`.
pub fn non_negative_money() -> Value {
    json!({"anyOf": [
        {"type": "string", "pattern": "^[0-9]{1,12}(\\.[0-9]{1,2})?$"},
        {"type": "integer", "minimum": 0, "maximum": 999_999_999_999i64}
    ], "description": "KES, 0 or more: a decimal string with at most two places, or a whole number"})
}

/// Line items (`{description, quantity, price}`) as Billing stores them: at most
/// 100 lines, a description of 1 to 200 characters, 1 to 10 000 units, a unit
/// price of 0 to 10 000 000 KES. `allow_empty`: one-off charges may be none.
pub fn line_items(allow_empty: bool) -> Value {
    json!({"type": "array", "minItems": if allow_empty { 0 } else { 1 }, "maxItems": 100,
    "items": {"type": "object", "additionalProperties": false,
        "required": ["description", "quantity", "price"],
        "properties": {
            "id": any("Ignored (clients echo it back)"),
            "description": {"type": "string", "maxLength": 200, "pattern": not_blank()},
            "quantity": {"type": "integer", "minimum": 1, "maximum": 10_000},
            "price": {"anyOf": [
                {"type": "string", "pattern": "^([0-9]{1,7}(\\.[0-9]{1,2})?|10000000(\\.0{1,2})?)$"},
                {"type": "integer", "minimum": 0, "maximum": 10_000_000}
            ], "description": "KES per unit, 0 to 10 000 000"}
        }}})
}

/// The schema of a value the validator accepts for a field of `kind` (null too
/// unless `required`): for custom bodies parsed with the engine's `canonical`.
pub fn field_input(name: &'static str, kind: Kind, required: bool) -> Value {
    let mut f = Field::new(name, name, kind);
    f.required = required;
    in_schema(&f, true)
}

/// A field as the validator accepts it in a create (`create`) or update body.
fn in_schema(f: &Field, create: bool) -> Value {
    // Required fields refuse null and blank text (a default fills in only what
    // is left out); an optional field's default fills in null on create. A
    // checkbox is never null (its column is NOT NULL) but for that default.
    let may_be_null = !f.required && (f.kind != Kind::Bool || (create && f.default.is_some()));
    let v = match f.kind {
        Kind::Text { max } => json!({"type": "string", "maxLength": max,
            "pattern": if may_be_null { NO_NUL.to_string() } else { not_blank() }}),
        // 255 keeps the domain within the validator's 253 whatever the local part.
        Kind::Email => json!({"type": "string", "maxLength": 255, "pattern": email()}),
        Kind::Phone => json!({"type": "string", "pattern": KE_PHONE,
            "description": "A Kenyan number in any usual form (0712345678, +254712345678, 254712345678), or any valid number in E.164; stored in E.164"}),
        Kind::Int { min, max } => json!({"type": "integer", "minimum": min, "maximum": max}),
        Kind::Money => json!({"anyOf": [
                {"type": "string", "pattern": MONEY_IN},
                {"type": "integer", "minimum": -999_999_999_999i64, "maximum": 999_999_999_999i64}
            ],
            "description": "KES: a decimal string with at most two places (\"1500.50\"), or a whole number; numbers with a fraction are accepted too, read through their shortest decimal text"}),
        Kind::Bool => json!({"type": "boolean"}),
        Kind::Date => json!({"type": "string", "format": "date"}),
        Kind::Timestamp => json!({"type": "string", "format": "date-time"}),
        Kind::Select(opts) => json!({"type": "string", "enum": opts}),
        Kind::Relation => json!({"type": "string", "format": "uuid", "pattern": UUID}),
        Kind::Relations => json!({"type": "array",
            "items": {"type": "string", "format": "uuid", "pattern": UUID}}),
        Kind::Point => json!({"type": "array", "minItems": 2, "maxItems": 2,
            "prefixItems": [
                {"type": "number", "minimum": -180, "maximum": 180},
                {"type": "number", "minimum": -90, "maximum": 90}
            ],
            "items": false,
            "description": "[longitude, latitude]"}),
        Kind::Json if may_be_null => return any("JSON, checked by the collection's rules"),
        Kind::Json => json!({"type": ["boolean", "object", "array", "number", "string"],
            "description": "JSON, checked by the collection's rules"}),
        Kind::Password => json!({"type": "string", "format": "password",
            "minLength": 8, "maxLength": 256, "pattern": NO_NUL}),
    };
    let mut v = match (&f.schema, v) {
        // The collection's rule replaces the kind's keywords; anyOf replaces type.
        (Some(Value::Object(rule)), Value::Object(mut kind)) => {
            if rule.contains_key("anyOf") {
                kind.remove("type");
                kind.remove("pattern");
            }
            kind.extend(rule.clone());
            Value::Object(kind)
        }
        (_, v) => v,
    };
    // Optional text that is blank is stored as null, whatever the collection's
    // rule for a value: the rule's pattern (or anyOf) admits blank too.
    if !f.required && matches!(f.kind, Kind::Text { .. }) && f.schema.is_some() {
        let blank = format!("^[{WS}]*$");
        if let Some(any_of) = v.get_mut("anyOf").and_then(Value::as_array_mut) {
            any_of.push(json!({"type": "string", "pattern": blank}));
        } else if let Some(p) = v.get("pattern").and_then(Value::as_str) {
            v["pattern"] = json!(format!("{blank}|{p}"));
        }
    }
    v = nullable(v, may_be_null);
    if let (Some(default), true) = (&f.default, create) {
        v["default"] = default.clone();
    }
    v
}

/// The body of a create (`create`) or an update: every field a client may send,
/// nothing else (an unknown field is a 400). `id`, `createdAt` and `updatedAt`
/// are accepted and ignored, as Payload clients echo them back.
fn input_schema(c: &Collection, create: bool) -> Value {
    let mut props = serde_json::Map::new();
    for echo in ["id", "createdAt", "updatedAt"] {
        props.insert(echo.into(), any("Ignored (clients echo it back)"));
    }
    let mut required = vec![];
    for f in c.fields.iter().filter(|f| !f.hidden && !f.system) {
        if !create && f.immutable {
            continue; // set once, on create
        }
        props.insert(f.name.into(), in_schema(f, create));
        if create && f.required && f.default.is_none() {
            required.push(f.name);
        }
    }
    let mut v = json!({"type": "object", "properties": props, "additionalProperties": false});
    if !required.is_empty() {
        v["required"] = json!(required);
    }
    v
}

/// A document: `id`, timestamps and every field that leaves the service.
fn document_schema(c: &Collection) -> Value {
    let mut props = serde_json::Map::new();
    props.insert("id".into(), json!({"type": "string", "format": "uuid"}));
    for t in ["createdAt", "updatedAt"] {
        props.insert(t.into(), json!({"type": "string", "format": "date-time"}));
    }
    for f in c
        .fields
        .iter()
        .filter(|f| !f.hidden && f.kind != Kind::Password)
    {
        props.insert(f.name.into(), out_schema(f));
    }
    json!({"type": "object", "properties": props, "required": ["id", "createdAt", "updatedAt"]})
}

/// `sort`: comma-separated field names, each optionally prefixed with `-`.
fn sort_schema(c: &Collection) -> Value {
    let mut names = vec!["id", "createdAt", "updatedAt"];
    names.extend(
        c.fields
            .iter()
            .filter(|f| !f.hidden && f.kind != Kind::Password)
            .map(|f| f.name),
    );
    let one = format!("(-?({}))", names.join("|"));
    json!({"type": "string", "pattern": format!("^({one}?)(,{one}?)*$"),
        "description": format!("Fields to sort by, `-` for descending, comma-separated: {}", names.join(", "))})
}

fn name_of(c: &Collection) -> String {
    let mut s = c.label.replace(' ', "");
    if let Some(first) = s.get_mut(..1) {
        first.make_ascii_uppercase();
    }
    s
}

fn json_content(schema: impl Into<RefOr<Schema>>) -> utoipa::openapi::Content {
    ContentBuilder::new().schema(Some(schema)).build()
}

/// The error answer every status but 2xx carries.
fn errors_schema() -> Value {
    json!({"type": "object", "required": ["errors"], "properties": {"errors": {
    "type": "array", "minItems": 1, "items": {
        "type": "object", "required": ["message"], "properties": {
            "message": {"type": "string"},
            "path": {"type": "string", "description": "The field, when one is at fault"}
        }}}}})
}

/// What each error status means, as every service answers it.
const ERROR_STATUSES: &[(&str, &str)] = &[
    ("400", "Invalid input; one entry per bad field"),
    ("401", "Not logged in, or the token has expired or was ended"),
    ("403", "The role (or the service token's scopes) may not do this, or may not write a field it names"),
    ("404", "Not found"),
    ("409", "A unique value is taken, or the record's state does not allow this"),
    ("503", "Nothing was applied (a peer service or the database was busy); resend after Retry-After"),
];

fn error_response(code: &str) -> utoipa::openapi::Response {
    let description = ERROR_STATUSES
        .iter()
        .find(|(c, _)| *c == code)
        .map(|(_, d)| *d)
        .unwrap_or("Error");
    let mut r = ResponseBuilder::new().description(description).content(
        "application/json",
        json_content(Ref::from_schema_name("Errors")),
    );
    if code == "503" {
        r = r.header(
            "Retry-After",
            utoipa::openapi::HeaderBuilder::new()
                .schema(
                    ObjectBuilder::new()
                        .schema_type(Type::Integer)
                        .minimum(Some(0.0)),
                )
                .description(Some("Seconds to wait before resending"))
                .build(),
        );
    }
    r.build()
}

/// Declares, on every operation of `doc`, the error answers it can give and
/// does not list yet: 503 everywhere (the database can be busy), 400 where the
/// request carries parameters or a body, 401 and 403 where it needs a token, 404
/// where the path names a record. Custom operations then need to list only what
/// is particular to them (a 409 of a state rule). Adds the `Errors` schema.
pub fn complete(doc: &mut OpenApi) {
    let components = doc.components.get_or_insert_with(Default::default);
    components
        .schemas
        .entry("Errors".to_string())
        .or_insert_with(|| schema(errors_schema()));
    for (path, item) in doc.paths.paths.iter_mut() {
        let ops = [
            item.get.as_mut(),
            item.put.as_mut(),
            item.post.as_mut(),
            item.delete.as_mut(),
            item.patch.as_mut(),
        ];
        for op in ops.into_iter().flatten() {
            let mut codes = vec!["503"];
            let has_params = op.parameters.as_ref().is_some_and(|p| !p.is_empty());
            if has_params || op.request_body.is_some() {
                codes.push("400");
            }
            if op.security.as_ref().is_some_and(|s| !s.is_empty()) {
                codes.extend(["401", "403"]);
            }
            if path.contains('{') {
                codes.push("404");
            }
            for code in codes {
                op.responses
                    .responses
                    .entry(code.to_string())
                    .or_insert_with(|| RefOr::T(error_response(code)));
            }
        }
    }
}

/// The OpenAPI document of one service's collections.
pub fn collections_doc(service: &str, title: &str, collections: &[&Collection]) -> OpenApi {
    let mut paths = PathsBuilder::new();
    let mut components = ComponentsBuilder::new()
        .security_scheme(
            "jwt",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .bearer_format("JWT")
                    .build(),
            ),
        )
        .schema("Errors", schema(errors_schema()));
    let errors = |codes: &[&str]| {
        codes
            .iter()
            .map(|c| (c.to_string(), error_response(c)))
            .collect::<Vec<_>>()
    };
    for c in collections {
        let name = name_of(c);
        components = components
            .schema(name.clone(), schema(document_schema(c)))
            .schema(format!("{name}Input"), schema(input_schema(c, true)))
            .schema(format!("{name}Update"), schema(input_schema(c, false)));
        let tag = c.slug.to_string();
        let base = format!("/api/{service}/{}", c.slug);
        let int = || json!({"type": "integer"});
        let page = schema(json!({
            "type": "object",
            "required": ["docs", "totalDocs", "limit", "page", "totalPages", "pagingCounter",
                         "hasPrevPage", "hasNextPage", "prevPage", "nextPage"],
            "properties": {
                "docs": {"type": "array", "items": {"$ref": format!("#/components/schemas/{name}")}},
                "totalDocs": {"type": "integer", "minimum": 0},
                "limit": {"type": "integer", "minimum": 1, "maximum": MAX_LIMIT},
                "page": {"type": "integer", "minimum": 1},
                "totalPages": {"type": "integer", "minimum": 1},
                "pagingCounter": {"type": "integer", "minimum": 1},
                "hasPrevPage": {"type": "boolean"},
                "hasNextPage": {"type": "boolean"},
                "prevPage": nullable(int(), true),
                "nextPage": nullable(int(), true),
            }
        }));
        let one = || {
            schema(
                json!({"type": "object", "required": ["doc", "message"], "properties": {
                    "doc": {"$ref": format!("#/components/schemas/{name}")},
                    "message": {"type": "string"}
                }}),
            )
        };
        let sec = || SecurityRequirement::new("jwt", Vec::<String>::new());
        // Fields whose value must name an existing record (here or in another
        // service): JSON Schema cannot say that, so the operation says it, for
        // clients and for script/fuzz (an unknown id is a 400 naming the field).
        let references: Vec<&str> = c
            .fields
            .iter()
            .filter(|f| {
                !f.hidden && !f.system && matches!(f.kind, Kind::Relation | Kind::Relations)
            })
            .map(|f| f.name)
            .collect();
        // And what the hooks check that no schema can say (`x-rules`).
        let refs_ext = || {
            let mut ext = utoipa::openapi::extensions::ExtensionsBuilder::new();
            if !references.is_empty() {
                ext = ext.add("x-references", json!(references));
            }
            if !c.rules().is_empty() {
                ext = ext.add("x-rules", json!(c.rules()));
            }
            (!references.is_empty() || !c.rules().is_empty()).then(|| ext.build())
        };
        let query = |name: &str, s: Value, d: &str| {
            ParameterBuilder::new()
                .name(name)
                .parameter_in(ParameterIn::Query)
                .description(Some(d))
                .schema(Some(schema(s)))
        };
        let mut list = OperationBuilder::new()
            .operation_id(Some(format!("list_{}", c.slug)))
            .tag(tag.clone())
            .summary(Some(format!("List {}", c.slug)))
            .description(Some("Payload-style query: limit (max 100), page, sort=field|-field, where[field][op]=value with equals, not_equals, in, not_in, greater_than, greater_than_equal, less_than, less_than_equal, like, exists."))
            .security(sec())
            .parameter(query("limit", json!({"type": "integer", "minimum": 0, "maximum": MAX_LIMIT, "default": crate::query::DEFAULT_LIMIT}), "Documents per page; 0 means the most (100)"))
            .parameter(query("page", json!({"type": "integer", "minimum": 1, "maximum": 1_000_000, "default": 1}), "1-based page"))
            .parameter(query("sort", sort_schema(c), "Sort order"))
            .response("200", ResponseBuilder::new().description("A page of documents").content("application/json", json_content(page)).build());
        let body = |schema_name: String, required: bool| {
            let mut b = RequestBodyBuilder::new().content(
                "application/json",
                json_content(Ref::from_schema_name(schema_name)),
            );
            if required {
                b = b.required(Some(utoipa::openapi::Required::True));
            }
            b.build()
        };
        let mut create = OperationBuilder::new()
            .operation_id(Some(format!("create_{}", c.slug)))
            .tag(tag.clone())
            .summary(Some(format!("Create a {}", c.label.to_lowercase())))
            .extensions(refs_ext())
            .security(sec())
            .request_body(Some(body(format!("{name}Input"), true)))
            .response(
                "201",
                ResponseBuilder::new()
                    .description("Created")
                    .content("application/json", json_content(one()))
                    .build(),
            );
        let id_param = || {
            ParameterBuilder::new()
                .name("id")
                .parameter_in(ParameterIn::Path)
                .required(utoipa::openapi::Required::True)
                .schema(Some(schema(
                    json!({"type": "string", "format": "uuid", "pattern": UUID}),
                )))
        };
        let mut get = OperationBuilder::new()
            .operation_id(Some(format!("get_{}", c.slug)))
            .tag(tag.clone())
            .summary(Some(format!("Get a {}", c.label.to_lowercase())))
            .security(sec())
            .parameter(id_param())
            .response(
                "200",
                ResponseBuilder::new()
                    .description("The document")
                    .content(
                        "application/json",
                        json_content(Ref::from_schema_name(&name)),
                    )
                    .build(),
            );
        let mut patch = OperationBuilder::new()
            .operation_id(Some(format!("update_{}", c.slug)))
            .tag(tag.clone())
            .summary(Some(format!("Update part of a {}", c.label.to_lowercase())))
            .extensions(refs_ext())
            .security(sec())
            .parameter(id_param())
            .request_body(Some(body(format!("{name}Update"), false)))
            .response(
                "200",
                ResponseBuilder::new()
                    .description("Updated")
                    .content("application/json", json_content(one()))
                    .build(),
            );
        let mut delete = OperationBuilder::new()
            .operation_id(Some(format!("delete_{}", c.slug)))
            .tag(tag.clone())
            .summary(Some(format!("Delete a {}", c.label.to_lowercase())))
            .security(sec())
            .parameter(id_param())
            .response(
                "200",
                ResponseBuilder::new()
                    .description("Deleted")
                    .content("application/json", json_content(one()))
                    .build(),
            );
        for (code, r) in errors(&["400", "401", "403", "503"]) {
            list = list.response(code, r);
        }
        for (code, r) in errors(&["400", "401", "403", "409", "503"]) {
            create = create.response(code, r);
        }
        for (code, r) in errors(&["400", "401", "403", "404", "503"]) {
            get = get.response(code, r);
        }
        for (code, r) in errors(&["400", "401", "403", "404", "409", "503"]) {
            patch = patch.response(code.clone(), r.clone());
            delete = delete.response(code, r);
        }
        if c.is_idempotent_create() {
            create = create.parameter(
                ParameterBuilder::new()
                    .name("Idempotency-Key")
                    .parameter_in(ParameterIn::Header)
                    .description(Some(
                        "Retries with the same key and body return the first answer",
                    ))
                    .schema(Some(
                        ObjectBuilder::new()
                            .schema_type(Type::String)
                            .min_length(Some(1))
                            .max_length(Some(200)),
                    )),
            );
        }
        // Operations a service serves itself are documented by its own route;
        // those no role may perform are not served at all.
        let served = |op: Operation| c.routes_op(op);
        let mut all = PathItemBuilder::new();
        if served(Operation::Read) {
            all = all.operation(HttpMethod::Get, list.build());
        }
        if served(Operation::Create) {
            all = all.operation(HttpMethod::Post, create.build());
        }
        let mut one = PathItemBuilder::new();
        if served(Operation::Read) {
            one = one.operation(HttpMethod::Get, get.build());
        }
        if served(Operation::Update) {
            one = one.operation(HttpMethod::Patch, patch.build());
        }
        if served(Operation::Delete) {
            one = one.operation(HttpMethod::Delete, delete.build());
        }
        if served(Operation::Read) || served(Operation::Create) {
            paths = paths.path(&base, all.build());
        }
        if [Operation::Read, Operation::Update, Operation::Delete]
            .into_iter()
            .any(served)
        {
            paths = paths.path(format!("{base}/{{id}}"), one.build());
        }
    }
    OpenApiBuilder::new()
        .info(
            InfoBuilder::new()
                .title(title)
                .version(env!("CARGO_PKG_VERSION"))
                .build(),
        )
        .paths(paths.build())
        .components(Some(components.build()))
        .build()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn matches(pattern: &str, s: &str) -> bool {
        regex::Regex::new(pattern).unwrap().is_match(s)
    }

    /// The schemas say what the validator refuses: NUL in a password, blank in
    /// an optional field with a rule of its own (stored as null).
    #[test]
    fn input_schemas_are_the_validators() {
        let pw = in_schema(
            &Field::new("password", "p", Kind::Password).required(),
            true,
        );
        let p = pw["pattern"].as_str().unwrap();
        assert!(matches(p, "secret-password"));
        assert!(!matches(p, "secret\u{0}password"));
        let mac = Field::new("mac", "mac", Kind::TEXT)
            .schema(json!({"pattern": format!("^[{WS}]*[0-9A-F]{{12}}[{WS}]*$")}));
        let v = in_schema(&mac, true);
        let p = v["pattern"].as_str().unwrap();
        assert!(matches(p, "") && matches(p, " \u{a0}") && matches(p, "AABBCCDDEEFF"));
        assert!(!matches(p, "AABB"));
        let ip = Field::new("ip", "ip", Kind::TEXT)
            .schema(json!({"anyOf": [{"type": "string", "format": "ipv4"}]}));
        let v = in_schema(&ip, true);
        assert_eq!(v["anyOf"][1]["pattern"], json!(format!("^[{WS}]*$")));
        // What trimming drops is what the patterns call blank.
        let blank: String = (0..=0x3000u32)
            .filter_map(char::from_u32)
            .filter(|c| c.is_whitespace())
            .collect();
        assert!(matches(&format!("^[{WS}]*$"), &blank));
        let one = regex::Regex::new(&format!("^[{WS}]$")).unwrap();
        let not = (0..=0x10ffffu32)
            .filter_map(char::from_u32)
            .find(|c| !c.is_whitespace() && one.is_match(c.encode_utf8(&mut [0; 4])));
        assert_eq!(not, None);
        assert!(!matches(&not_blank(), &blank));
    }
}
