//! API keys at the edge: CreateKey's and UpdateKey's requests parsed, keys
//! shown (never their secrets).
use super::*;

pub(super) fn key_environment(v: &mut Violations, field: &str, raw: i32) -> Option<KeyEnvironment> {
    match pb::KeyEnvironment::try_from(raw) {
        Ok(pb::KeyEnvironment::Unspecified | pb::KeyEnvironment::Live) => {
            Some(KeyEnvironment::Live)
        }
        Ok(pb::KeyEnvironment::Test) => Some(KeyEnvironment::Test),
        Err(_) => {
            v.push(field, format!("{raw} is not a KeyEnvironment"));
            None
        }
    }
}

pub(super) fn opt_rate_limit(
    v: &mut Violations,
    field: &str,
    r: Option<&pb::RateLimit>,
) -> Option<Option<RateLimit>> {
    match r {
        None => Some(None),
        Some(r) => rate_limit(v, field, Some(r)).map(Some),
    }
}

pub fn new_key(req: pb::CreateKeyRequest) -> Result<NewKey> {
    let Some(k) = req.key else {
        return Err(Error::invalid("key", "is required"));
    };
    let mut v = Violations::default();
    let tenant_id = v.required("key.tenant_id", &k.tenant_id, TenantId::parse);
    let environment = key_environment(&mut v, "key.environment", k.environment);
    let name = display_name(&mut v, "key.name", &k.name);
    let expires_at = opt_timestamp(&mut v, "key.expire_time", k.expire_time.as_ref());
    let rate_limit_override = opt_rate_limit(
        &mut v,
        "key.rate_limit_override",
        k.rate_limit_override.as_ref(),
    );
    let quota_overrides = quotas(&mut v, "key.quota_overrides", &k.quota_overrides);
    let metadata = metadata(&mut v, "key.metadata", &k.metadata);
    v.finish(|| {
        Some(NewKey {
            tenant_id: tenant_id?,
            environment: environment?,
            settings: KeySettings {
                name: name?,
                disabled: k.disabled,
                expires_at: expires_at?,
                rate_limit_override: rate_limit_override?,
                quota_overrides: quota_overrides?,
                metadata: metadata?,
            },
        })
    })
}

pub const KEY_MASK: &[&str] = &[
    "name",
    "disabled",
    "expire_time",
    "rate_limit_override",
    "quota_overrides",
    "metadata",
];

pub fn key_patch(req: pb::UpdateKeyRequest) -> Result<(crate::domain::ids::KeyId, KeyPatch)> {
    let Some(k) = req.key else {
        return Err(Error::invalid("key", "is required"));
    };
    let id = id("key.id", &k.id, crate::domain::ids::KeyId::parse)?;
    let paths = mask_paths(req.update_mask.as_ref(), KEY_MASK)?;
    let mut v = Violations::default();
    let mut patch = KeyPatch::default();
    for path in &paths {
        match path.as_str() {
            "name" => patch.name = display_name(&mut v, "key.name", &k.name),
            "disabled" => patch.disabled = Some(k.disabled),
            "expire_time" => {
                patch.expires_at = opt_timestamp(&mut v, "key.expire_time", k.expire_time.as_ref())
            }
            "rate_limit_override" => {
                patch.rate_limit_override = opt_rate_limit(
                    &mut v,
                    "key.rate_limit_override",
                    k.rate_limit_override.as_ref(),
                )
            }
            "quota_overrides" => {
                patch.quota_overrides = quotas(&mut v, "key.quota_overrides", &k.quota_overrides)
            }
            "metadata" => patch.metadata = metadata(&mut v, "key.metadata", &k.metadata),
            _ => unreachable!("mask_paths checked the paths"),
        }
    }
    v.finish(|| Some((id, patch)))
}

// ---- domain → proto ---------------------------------------------------------

/// A key as the API shows it; its status depends on the time of asking.
pub fn key_to_pb(k: &ApiKey, at: Timestamp) -> pb::Key {
    let s = &k.settings;
    pb::Key {
        id: k.id.to_string(),
        tenant_id: k.tenant_id.to_string(),
        name: s.name.clone(),
        environment: match k.environment {
            KeyEnvironment::Live => pb::KeyEnvironment::Live,
            KeyEnvironment::Test => pb::KeyEnvironment::Test,
        } as i32,
        prefix: k.prefix.clone(),
        status: match k.status(at) {
            KeyStatus::Active => pb::KeyStatus::Active,
            KeyStatus::Revoked => pb::KeyStatus::Revoked,
            KeyStatus::Expired => pb::KeyStatus::Expired,
        } as i32,
        disabled: s.disabled,
        expire_time: s.expires_at.map(timestamp),
        rate_limit_override: s.rate_limit_override.as_ref().map(rate_limit_to_pb),
        quota_overrides: s.quota_overrides.iter().map(quota_to_pb).collect(),
        metadata: s.metadata.entries().clone().into_iter().collect(),
        create_time: Some(timestamp(k.created_at)),
        update_time: Some(timestamp(k.updated_at)),
        last_used_time: k.last_used_at.map(timestamp),
        revoke_time: k.revoked_at.map(timestamp),
    }
}
