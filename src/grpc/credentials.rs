//! Service credentials at the edge: requests parsed, credentials shown
//! (never their tokens, which leave only in CreateCredential's answer).
use super::{
    convert::{Violations, opt_timestamp, timestamp},
    pb,
};
use crate::domain::{
    Result, Timestamp,
    credential::{Credential, CredentialStatus, Scope},
    text::bounded,
};

/// What CreateCredential asks for, every field checked at once.
pub struct NewCredential {
    pub scope: Scope,
    pub name: String,
    pub expires_at: Option<Timestamp>,
}

pub fn new_credential(req: &pb::CreateCredentialRequest) -> Result<NewCredential> {
    let mut v = Violations::default();
    let name = v.check("", bounded("name", &req.name, 200, false));
    let scope = match pb::CredentialScope::try_from(req.scope) {
        Ok(pb::CredentialScope::Admin) => Some(Scope::Admin),
        Ok(pb::CredentialScope::Verify) => Some(Scope::Verify),
        Ok(pb::CredentialScope::Unspecified) => {
            v.push(
                "scope",
                "is required: CREDENTIAL_SCOPE_ADMIN or CREDENTIAL_SCOPE_VERIFY",
            );
            None
        }
        Err(_) => {
            v.push("scope", format!("{} is not a CredentialScope", req.scope));
            None
        }
    };
    let expires_at = opt_timestamp(&mut v, "expire_time", req.expire_time.as_ref());
    v.finish(|| {
        Some(NewCredential {
            scope: scope?,
            name: name?,
            expires_at: expires_at?,
        })
    })
}

pub fn credential_to_pb(c: &Credential, at: Timestamp) -> pb::Credential {
    pb::Credential {
        id: c.id.to_string(),
        name: c.name.clone(),
        scope: match c.scope {
            Scope::Admin => pb::CredentialScope::Admin,
            Scope::Verify => pb::CredentialScope::Verify,
        } as i32,
        status: match c.status(at) {
            CredentialStatus::Active => pb::CredentialStatus::Active,
            CredentialStatus::Expired => pb::CredentialStatus::Expired,
            CredentialStatus::Revoked => pb::CredentialStatus::Revoked,
        } as i32,
        create_time: Some(timestamp(c.created_at)),
        expire_time: c.expires_at.map(timestamp),
        revoke_time: c.revoked_at.map(timestamp),
        from_admin_token: c.seeded,
    }
}
