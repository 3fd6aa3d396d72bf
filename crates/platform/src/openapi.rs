//! OpenAPI documents built from the collection tables (so the contract cannot drift
//! from the code that serves it), merged with each service's `#[utoipa::path]`
//! custom operations.

use utoipa::openapi::path::{
    HttpMethod, OperationBuilder, ParameterBuilder, ParameterIn, PathItemBuilder,
};
use utoipa::openapi::request_body::RequestBodyBuilder;
use utoipa::openapi::schema::{ArrayBuilder, KnownFormat, ObjectBuilder, SchemaFormat, Type};
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityRequirement, SecurityScheme};
use utoipa::openapi::{
    ComponentsBuilder, ContentBuilder, InfoBuilder, OpenApi, OpenApiBuilder, PathsBuilder, Ref,
    RefOr, ResponseBuilder, Schema,
};

use crate::collection::{Collection, Kind};
use crate::query::MAX_LIMIT;

fn kind_schema(kind: Kind) -> RefOr<Schema> {
    let s = ObjectBuilder::new();
    let s = match kind {
        Kind::Text { max } => s.schema_type(Type::String).max_length(Some(max)),
        Kind::Email => s
            .schema_type(Type::String)
            .format(Some(SchemaFormat::KnownFormat(KnownFormat::Email))),
        Kind::Phone => s
            .schema_type(Type::String)
            .description(Some("E.164; Kenyan local forms are accepted")),
        Kind::Int { min, max } => s
            .schema_type(Type::Integer)
            .minimum(Some(min as f64))
            .maximum(Some(max as f64)),
        Kind::Money => s
            .schema_type(Type::String)
            .description(Some("KES, exact decimal with two places, e.g. \"1500.00\"")),
        Kind::Bool => s.schema_type(Type::Boolean),
        Kind::Date => s
            .schema_type(Type::String)
            .format(Some(SchemaFormat::KnownFormat(KnownFormat::Date))),
        Kind::Timestamp => s
            .schema_type(Type::String)
            .format(Some(SchemaFormat::KnownFormat(KnownFormat::DateTime))),
        Kind::Select(opts) => s
            .schema_type(Type::String)
            .enum_values(Some(opts.iter().copied())),
        Kind::Relation => s
            .schema_type(Type::String)
            .format(Some(SchemaFormat::KnownFormat(KnownFormat::Uuid))),
        Kind::Relations => {
            return ArrayBuilder::new()
                .items(
                    ObjectBuilder::new()
                        .schema_type(Type::String)
                        .format(Some(SchemaFormat::KnownFormat(KnownFormat::Uuid))),
                )
                .into()
        }
        Kind::Point => {
            return ArrayBuilder::new()
                .items(ObjectBuilder::new().schema_type(Type::Number))
                .min_items(Some(2))
                .max_items(Some(2))
                .description(Some("[longitude, latitude]"))
                .into()
        }
        Kind::Json => s,
        Kind::Password => s
            .schema_type(Type::String)
            .format(Some(SchemaFormat::KnownFormat(KnownFormat::Password)))
            .min_length(Some(8)),
    };
    s.into()
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
        .schema(
            "Errors",
            ObjectBuilder::new().property(
                "errors",
                ArrayBuilder::new().items(
                    ObjectBuilder::new()
                        .property("message", ObjectBuilder::new().schema_type(Type::String))
                        .property("path", ObjectBuilder::new().schema_type(Type::String))
                        .required("message"),
                ),
            ),
        );
    let errors = || {
        [
            ("400", "Invalid input; one entry per bad field"),
            ("401", "Not logged in"),
            ("403", "Role may not"),
            ("404", "Not found"),
            ("409", "Unique or state conflict"),
        ]
        .map(|(code, d)| {
            (
                code,
                ResponseBuilder::new()
                    .description(d)
                    .content(
                        "application/json",
                        json_content(Ref::from_schema_name("Errors")),
                    )
                    .build(),
            )
        })
    };
    for c in collections {
        let name = name_of(c);
        let mut doc = ObjectBuilder::new()
            .property("id", kind_schema(Kind::Relation))
            .property("createdAt", kind_schema(Kind::Timestamp))
            .property("updatedAt", kind_schema(Kind::Timestamp));
        let mut input = ObjectBuilder::new();
        for f in c.fields.iter().filter(|f| !f.hidden) {
            if f.kind != Kind::Password {
                doc = doc.property(f.name, kind_schema(f.kind));
            }
            if !f.system {
                let mut schema = kind_schema(f.kind);
                if let (Some(default), RefOr::T(Schema::Object(o))) = (&f.default, &mut schema) {
                    o.default = Some(default.clone());
                }
                input = input.property(f.name, schema);
                if f.required && f.kind != Kind::Bool && f.default.is_none() {
                    input = input.required(f.name);
                }
            }
        }
        components = components
            .schema(name.clone(), doc)
            .schema(format!("{name}Input"), input);
        let tag = c.slug.to_string();
        let base = format!("/api/{service}/{}", c.slug);
        let page = ObjectBuilder::new()
            .property(
                "docs",
                ArrayBuilder::new().items(Ref::from_schema_name(&name)),
            )
            .property("totalDocs", ObjectBuilder::new().schema_type(Type::Integer))
            .property("limit", ObjectBuilder::new().schema_type(Type::Integer))
            .property("page", ObjectBuilder::new().schema_type(Type::Integer))
            .property(
                "totalPages",
                ObjectBuilder::new().schema_type(Type::Integer),
            )
            .property(
                "pagingCounter",
                ObjectBuilder::new().schema_type(Type::Integer),
            )
            .property(
                "hasPrevPage",
                ObjectBuilder::new().schema_type(Type::Boolean),
            )
            .property(
                "hasNextPage",
                ObjectBuilder::new().schema_type(Type::Boolean),
            )
            .property("prevPage", ObjectBuilder::new().schema_type(Type::Integer))
            .property("nextPage", ObjectBuilder::new().schema_type(Type::Integer));
        let one = || {
            ObjectBuilder::new()
                .property("doc", Ref::from_schema_name(&name))
                .property("message", ObjectBuilder::new().schema_type(Type::String))
        };
        let sec = || SecurityRequirement::new("jwt", Vec::<String>::new());
        let mut list = OperationBuilder::new()
            .operation_id(Some(format!("list_{}", c.slug)))
            .tag(tag.clone())
            .summary(Some(format!("List {}", c.slug)))
            .description(Some("Payload-style query: limit (max 100), page, sort=field|-field, where[field][op]=value with equals, not_equals, in, not_in, greater_than, greater_than_equal, less_than, less_than_equal, like, exists."))
            .security(sec())
            .parameter(ParameterBuilder::new().name("limit").parameter_in(ParameterIn::Query).schema(Some(ObjectBuilder::new().schema_type(Type::Integer).maximum(Some(MAX_LIMIT as f64)))))
            .parameter(ParameterBuilder::new().name("page").parameter_in(ParameterIn::Query).schema(Some(ObjectBuilder::new().schema_type(Type::Integer))))
            .parameter(ParameterBuilder::new().name("sort").parameter_in(ParameterIn::Query).schema(Some(ObjectBuilder::new().schema_type(Type::String))))
            .response("200", ResponseBuilder::new().description("A page of documents").content("application/json", json_content(page)).build());
        let mut create = OperationBuilder::new()
            .operation_id(Some(format!("create_{}", c.slug)))
            .tag(tag.clone())
            .summary(Some(format!("Create a {}", c.label.to_lowercase())))
            .security(sec())
            .request_body(Some(
                RequestBodyBuilder::new()
                    .content(
                        "application/json",
                        json_content(Ref::from_schema_name(format!("{name}Input"))),
                    )
                    .required(Some(utoipa::openapi::Required::True))
                    .build(),
            ))
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
                .schema(Some(kind_schema(Kind::Relation)))
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
            .security(sec())
            .parameter(id_param())
            .request_body(Some(
                RequestBodyBuilder::new()
                    .content(
                        "application/json",
                        json_content(Ref::from_schema_name(format!("{name}Input"))),
                    )
                    .build(),
            ))
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
        for (code, r) in errors() {
            list = list.response(code, r.clone());
            create = create.response(code, r.clone());
            get = get.response(code, r.clone());
            patch = patch.response(code, r.clone());
            delete = delete.response(code, r);
        }
        paths = paths
            .path(
                &base,
                PathItemBuilder::new()
                    .operation(HttpMethod::Get, list.build())
                    .operation(HttpMethod::Post, create.build())
                    .build(),
            )
            .path(
                format!("{base}/{{id}}"),
                PathItemBuilder::new()
                    .operation(HttpMethod::Get, get.build())
                    .operation(HttpMethod::Patch, patch.build())
                    .operation(HttpMethod::Delete, delete.build())
                    .build(),
            );
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
