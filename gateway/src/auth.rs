//! Who is calling: a verified certificate (replicas, gateways, operators) or a bearer token
//! (users, with scopes), or nobody (only enrollment and the CA certificate are open to that).

use atoll_api::ApiError;
use atoll_api::ErrorCode;
use atoll_api::Identity;
use atoll_api::gateway::Scope;
use atoll_api::ids::ClusterName;
use atoll_api::serve::Peer;
use axum::extract::Request;
use axum::extract::State;
use axum::middleware::Next;
use axum::response::IntoResponse;
use axum::response::Response;
use std::sync::Arc;

use crate::Gateway;

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Caller {
    Node {
        cluster: ClusterName,
        node: u64,
    },
    Gateway(String),
    /// An operator certificate from the mesh CA: may do everything.
    Operator(String),
    User {
        name: String,
        scopes: Vec<Scope>,
    },
    Anonymous,
}

impl Caller {
    pub fn describe(&self) -> String {
        match self {
            Caller::Node { cluster, node } => format!("replica {node} of cluster {cluster}"),
            Caller::Gateway(id) => format!("gateway {id}"),
            Caller::Operator(name) => format!("operator {name}"),
            Caller::User { name, .. } => format!("user {name}"),
            Caller::Anonymous => "an anonymous client".to_string(),
        }
    }

    /// Whether the caller holds `scope`: admin implies submit, submit implies read; replicas
    /// and gateways may read.
    pub fn allows(&self, scope: Scope) -> bool {
        match self {
            Caller::Operator(_) => true,
            Caller::User { scopes, .. } => scopes.iter().any(|held| match held {
                Scope::Admin => true,
                Scope::Submit => scope != Scope::Admin,
                Scope::Read => scope == Scope::Read,
            }),
            Caller::Node { .. } | Caller::Gateway(_) => scope == Scope::Read,
            Caller::Anonymous => false,
        }
    }

    pub fn require(&self, scope: Scope) -> Result<(), ApiError> {
        if self.allows(scope) {
            return Ok(());
        }
        let scope_name = format!("{scope:?}").to_lowercase();
        match self {
            Caller::Anonymous => Err(ApiError::new(
                ErrorCode::Unauthenticated,
                format!("this needs a bearer token with the {scope_name} scope"),
            )),
            other => Err(ApiError::forbidden(format!("{} lacks the {scope_name} scope", other.describe()))),
        }
    }

    /// The node id, when the caller is a replica of `cluster`.
    pub fn replica_of(&self, cluster: &str) -> Result<u64, ApiError> {
        match self {
            Caller::Node { cluster: c, node } if c.as_str() == cluster => Ok(*node),
            other => Err(ApiError::forbidden(format!("{} may not act for cluster {cluster}", other.describe()))),
        }
    }

    /// As [`Caller::replica_of`], answering with the cluster's name as its certificate names it.
    pub fn replica_cluster(&self, cluster: &str) -> Result<&ClusterName, ApiError> {
        self.replica_of(cluster)?;
        match self {
            Caller::Node { cluster, .. } => Ok(cluster),
            other => Err(ApiError::forbidden(format!("{} may not act for cluster {cluster}", other.describe()))),
        }
    }
}

/// Middleware: attach the [`Caller`] to the request, or refuse a bad token or a replica of a
/// revoked cluster (whatever it asks).
pub async fn identify(State(gateway): State<Arc<Gateway>>, mut request: Request, next: Next) -> Response {
    let caller = match request.extensions().get::<Peer>() {
        Some(Peer(Identity::Node { cluster, .. })) if gateway.registry.is_revoked(cluster.as_str()) => {
            return ApiError::new(ErrorCode::Revoked, format!("cluster {cluster} is revoked")).into_response();
        }
        Some(Peer(Identity::Node { cluster, node })) => Caller::Node { cluster: cluster.clone(), node: node.0 },
        Some(Peer(Identity::Gateway { id })) => Caller::Gateway(id.clone()),
        Some(Peer(Identity::Operator { name })) => Caller::Operator(name.clone()),
        None => match request.headers().get(axum::http::header::AUTHORIZATION) {
            None => Caller::Anonymous,
            Some(value) => match bearer(value.to_str().unwrap_or_default(), &gateway).await {
                Ok(caller) => caller,
                Err(e) => return e.into_response(),
            },
        },
    };
    request.extensions_mut().insert(caller);
    next.run(request).await
}

async fn bearer(header: &str, gateway: &Gateway) -> Result<Caller, ApiError> {
    let unauthenticated = |why: &str| ApiError::new(ErrorCode::Unauthenticated, why.to_string());
    let token = header
        .strip_prefix("Bearer ")
        .ok_or_else(|| unauthenticated("the Authorization header must be `Bearer <token>`"))?;
    let secret = atoll_api::token::parse_user_token(token).map_err(|e| unauthenticated(&e.to_string()))?;
    let hash = atoll_api::token::hash_secret(&secret);
    match gateway.db.user_token(&hash, crate::now_ms()).await.map_err(|e| ApiError::unavailable(e.to_string()))? {
        Some(user) => Ok(Caller::User { name: user.name, scopes: user.scopes }),
        None => Err(unauthenticated("unknown or expired token")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scopes_nest() {
        let user = |scopes: &[Scope]| Caller::User { name: "u".into(), scopes: scopes.to_vec() };
        assert!(user(&[Scope::Admin]).allows(Scope::Read));
        assert!(user(&[Scope::Admin]).allows(Scope::Submit));
        assert!(user(&[Scope::Submit]).allows(Scope::Read));
        assert!(!user(&[Scope::Submit]).allows(Scope::Admin));
        assert!(!user(&[Scope::Read]).allows(Scope::Submit));
        assert!(!user(&[]).allows(Scope::Read));
        let node = Caller::Node { cluster: "aws".parse().unwrap(), node: 1 };
        assert!(node.allows(Scope::Read) && !node.allows(Scope::Submit));
        assert!(Caller::Operator("admin".into()).allows(Scope::Admin));
        assert_eq!(Caller::Anonymous.require(Scope::Read).unwrap_err().code, ErrorCode::Unauthenticated);
        assert_eq!(user(&[Scope::Read]).require(Scope::Admin).unwrap_err().code, ErrorCode::Forbidden);
        assert_eq!(node.replica_of("aws").unwrap(), 1);
        assert!(node.replica_of("gcp").is_err());
    }
}
