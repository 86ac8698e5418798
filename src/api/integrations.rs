//! Admin endpoints for integrations (server API key): create, list, show, rotate a secret,
//! disable, and see outbound deliveries and webhook signature failures. Secrets are returned
//! once — when Switchboard generates them — and never again.

use actix_web::{web, HttpResponse};
use serde::{Deserialize, Serialize};
use serde_json::json;

use super::extract::{Json, ServerKey};
use super::{optional_json, AppState};
use crate::auth::signature::generate_secret;
use crate::error::{field, ApiError};
use crate::ids::{check_id, random_id, AccountId};
use crate::store::deliveries;
use crate::store::integrations::{self, Integration, NewIntegration, Provider, SecretKind};

/// An integration as the API shows it: everything but its secrets.
#[derive(Serialize)]
pub struct IntegrationView<'a> {
    id: &'a str,
    provider: &'a str,
    external_id: &'a str,
    account_id: &'a str,
    app_id: Option<&'a str>,
    outbound_url: Option<&'a str>,
    enabled: bool,
    disabled_at: Option<i64>,
    created_at: i64,
    /// Where this integration's provider posts; none for a presence integration.
    #[serde(skip_serializing_if = "Option::is_none")]
    webhook_path: Option<String>,
}

impl<'a> From<&'a Integration> for IntegrationView<'a> {
    fn from(i: &'a Integration) -> Self {
        Self {
            id: &i.id,
            provider: &i.provider,
            external_id: &i.external_id,
            account_id: i.account_id.as_str(),
            app_id: i.app_id.as_deref(),
            outbound_url: i.outbound_url.as_deref(),
            enabled: i.disabled_at.is_none(),
            disabled_at: i.disabled_at,
            created_at: i.created_at,
            webhook_path: match Provider::parse(&i.provider) {
                Some(Provider::Generic) => Some(format!("/webhooks/generic/{}", i.id)),
                Some(Provider::Presence) => None,
                _ => Some(format!("/webhooks/{}", i.provider)),
            },
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreateRequest {
    provider: String,
    /// Required, except for presence integrations (whose external id is their account's id).
    external_id: Option<String>,
    account_id: String,
    /// Facebook app secret or Zalo OA secret key; generated for generic integrations.
    secret: Option<String>,
    /// Zalo app id.
    app_id: Option<String>,
    outbound_url: Option<String>,
}

/// For generic integrations Switchboard makes the secret; providers' secrets are given.
fn inbound_secret(
    provider: Option<Provider>,
    given: Option<String>,
) -> Result<(String, bool), ApiError> {
    match (provider, given) {
        (Some(Provider::Generic), None) => Ok((generate_secret(), true)),
        // Nothing posts to a presence integration: its inbound secret is never used or shown.
        (Some(Provider::Presence), None) => Ok((generate_secret(), false)),
        (Some(Provider::Generic | Provider::Presence), Some(_)) => Err(ApiError::InvalidField {
            field: "secret",
            reason: "generic and presence integrations get a generated secret; leave it out".into(),
        }),
        (_, Some(secret)) if secret.len() >= 8 => Ok((secret, false)),
        (_, _) => Err(ApiError::InvalidField {
            field: "secret",
            reason:
                "required for facebook (app secret) and zalo (OA secret key), at least 8 characters"
                    .into(),
        }),
    }
}

/// `POST /api/v1/integrations`
pub async fn create(
    _: ServerKey,
    state: web::Data<AppState>,
    body: Json<CreateRequest>,
) -> Result<HttpResponse, ApiError> {
    let request = body.into_inner();
    let Some(provider) = Provider::parse(&request.provider) else {
        return Err(ApiError::InvalidField {
            field: "provider",
            reason: "must be facebook, zalo, generic or presence".into(),
        });
    };
    let account = field("account_id", AccountId::new(&request.account_id))?;
    let external_id = match (provider, request.external_id) {
        (Provider::Presence, None) => account.as_str().to_owned(),
        (Provider::Presence, Some(_)) => {
            return Err(ApiError::InvalidField {
                field: "external_id",
                reason: "a presence integration's external id is its account's id; leave it out"
                    .into(),
            })
        }
        (_, Some(id)) => id,
        (_, None) => {
            return Err(ApiError::InvalidField {
                field: "external_id",
                reason: "required".into(),
            })
        }
    };
    field("external_id", check_id(&external_id))?;
    if provider == Provider::Presence && request.outbound_url.is_none() {
        return Err(ApiError::InvalidField {
            field: "outbound_url",
            reason: "required for presence (where the webhooks go)".into(),
        });
    }
    if provider == Provider::Zalo && request.app_id.is_none() {
        return Err(ApiError::InvalidField {
            field: "app_id",
            reason: "required for zalo (it is part of Zalo's signature)".into(),
        });
    }
    if let Some(url) = &request.outbound_url {
        field("outbound_url", state.outbound_addresses.check_url(url))?;
    }
    let (secret, generated) = inbound_secret(Some(provider), request.secret)?;
    let outbound_secret = generate_secret();

    let id = random_id("int");
    let (secret_for_db, outbound_for_db) = (secret.clone(), outbound_secret.clone());
    let created = state
        .store
        .run(move |conn| {
            integrations::create(
                conn,
                &NewIntegration {
                    id: &id,
                    provider: provider.as_str(),
                    external_id: &external_id,
                    account_id: account.as_str(),
                    secret: &secret_for_db,
                    app_id: request.app_id.as_deref(),
                    outbound_url: request.outbound_url.as_deref(),
                    outbound_secret: &outbound_for_db,
                },
            )
        })
        .await?
        .ok_or(ApiError::IntegrationExists)?;
    log::info!(
        "integration created id={} provider={} account={}",
        created.id,
        created.provider,
        created.account_id
    );
    let mut body = serde_json::to_value(IntegrationView::from(&created)).expect("serializes");
    // Shown this once: Switchboard keeps no way to show them again.
    if generated {
        body["secret"] = json!(secret);
    }
    body["outbound_secret"] = json!(outbound_secret);
    Ok(HttpResponse::Created().json(body))
}

#[derive(Deserialize)]
pub struct ListQuery {
    account_id: Option<String>,
}

/// `GET /api/v1/integrations[?account_id=…]`
pub async fn list(
    _: ServerKey,
    state: web::Data<AppState>,
    query: web::Query<ListQuery>,
) -> Result<HttpResponse, ApiError> {
    let account = query.into_inner().account_id;
    let all = state
        .store
        .run(move |conn| integrations::list(conn, account.as_deref()))
        .await?;
    let views: Vec<IntegrationView> = all.iter().map(IntegrationView::from).collect();
    Ok(HttpResponse::Ok().json(json!({ "integrations": views })))
}

async fn load(state: &AppState, id: String) -> Result<Integration, ApiError> {
    state
        .store
        .run(move |conn| integrations::get(conn, &id))
        .await?
        .ok_or(ApiError::NoSuch("integration"))
}

/// `GET /api/v1/integrations/{id}`
pub async fn show(
    _: ServerKey,
    state: web::Data<AppState>,
    path: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let integration = load(&state, path.into_inner()).await?;
    Ok(HttpResponse::Ok().json(IntegrationView::from(&integration)))
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct RotateRequest {
    /// `inbound` (default) or `outbound`.
    which: Option<String>,
    /// The provider's new secret (facebook, zalo inbound); generated otherwise.
    secret: Option<String>,
}

/// `POST /api/v1/integrations/{id}/rotate-secret`
pub async fn rotate_secret(
    _: ServerKey,
    state: web::Data<AppState>,
    path: web::Path<String>,
    body: web::Bytes,
) -> Result<HttpResponse, ApiError> {
    let request: RotateRequest = optional_json(&body)?;
    let integration = load(&state, path.into_inner()).await?;
    let (kind, secret, generated) = match request.which.as_deref().unwrap_or("inbound") {
        "inbound" => {
            let (secret, generated) =
                inbound_secret(Provider::parse(&integration.provider), request.secret)?;
            (SecretKind::Inbound, secret, generated)
        }
        "outbound" if request.secret.is_none() => (SecretKind::Outbound, generate_secret(), true),
        "outbound" => {
            return Err(ApiError::InvalidField {
                field: "secret",
                reason: "outbound secrets are generated; leave it out".into(),
            })
        }
        _ => {
            return Err(ApiError::InvalidField {
                field: "which",
                reason: "must be inbound or outbound".into(),
            })
        }
    };
    let new_secret = secret.clone();
    let id = integration.id.clone();
    let updated = state
        .store
        .run(move |conn| integrations::set_secret(conn, &id, kind, &new_secret))
        .await?
        .ok_or(ApiError::NoSuch("integration"))?;
    log::info!(
        "integration secret rotated id={} which={kind:?}",
        updated.id
    );
    let mut body = serde_json::to_value(IntegrationView::from(&updated)).expect("serializes");
    if generated {
        body["secret"] = json!(secret);
    }
    Ok(HttpResponse::Ok().json(body))
}

/// `POST /api/v1/integrations/{id}/disable`
pub async fn disable(
    _: ServerKey,
    state: web::Data<AppState>,
    path: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let id = path.into_inner();
    let integration = state
        .store
        .run(move |conn| integrations::disable(conn, &id))
        .await?
        .ok_or(ApiError::NoSuch("integration"))?;
    log::info!("integration disabled id={}", integration.id);
    Ok(HttpResponse::Ok().json(IntegrationView::from(&integration)))
}

/// `GET /api/v1/integrations/{id}/deliveries`: the latest outbound webhooks and their fate.
pub async fn deliveries(
    _: ServerKey,
    state: web::Data<AppState>,
    path: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let integration = load(&state, path.into_inner()).await?;
    let recent = state
        .store
        .run(move |conn| deliveries::recent(conn, &integration.id, 100))
        .await?;
    Ok(HttpResponse::Ok().json(json!({ "deliveries": recent })))
}

/// `GET /api/v1/webhooks/stats`
pub async fn webhook_stats(_: ServerKey, state: web::Data<AppState>) -> HttpResponse {
    HttpResponse::Ok().json(state.webhooks.stats.to_json())
}
