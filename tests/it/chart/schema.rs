//! Values the chart refuses before anything is created, each with a
//! message that names the culprit.
use serde_json::json;

use super::*;

#[test]
fn refuses_replicas_without_database_and_redis() {
    let e = refused(json!({"replicaCount": 3}));
    assert!(
        e.contains("at '/database': missing property 'url or existingSecret"),
        "{e}"
    );
    assert!(
        e.contains("at '/redis': missing property 'url or existingSecret"),
        "{e}"
    );
    assert!(e.contains("replicaCount above 1"), "{e}");
}

#[test]
fn refuses_replicas_with_a_database_but_no_redis() {
    let e = refused(json!({"replicaCount": 2, "database": {"url": "postgres://pg/tollgate"}}));
    assert!(
        e.contains("at '/redis': missing property 'url or existingSecret"),
        "{e}"
    );
    assert!(!e.contains("'/database'"), "{e}");
    // One replica on PostgreSQL alone is fine (an in-process limiter), and
    // never two at once, even in a rollout: their limiters would not share
    // counts, and each would admit up to a hard cap.
    let manifests = render_valid(
        json!({"replicaCount": 1, "database": {"url": "postgres://pg/tollgate"}}),
        &[],
    );
    assert!(has(&manifests, "Job"));
    assert!(!has(&manifests, "PersistentVolumeClaim"));
    let deployment = find(&manifests, "Deployment", "server");
    assert_eq!(deployment["spec"]["strategy"]["type"], "Recreate");
}

#[test]
fn refuses_autoscaling_in_embedded_mode() {
    let e = refused(json!({"autoscaling": {"enabled": true}}));
    assert!(e.contains("at '/database': missing property"), "{e}");
    assert!(e.contains("at '/redis': missing property"), "{e}");
    assert!(e.contains("autoscaling.enabled"), "{e}");
}

#[test]
fn refuses_a_replica_count_that_is_not_a_number() {
    let e = refused(json!({"replicaCount": "two"}));
    assert!(
        e.contains("at '/replicaCount': got string, want integer"),
        "{e}"
    );
}

#[test]
fn refuses_an_unknown_top_level_key() {
    let e = refused(json!({"replicas": 3}));
    assert!(
        e.contains("at '': additional properties 'replicas' not allowed"),
        "{e}"
    );
}

#[test]
fn refuses_an_unknown_key_in_database() {
    let e = refused(json!({"database": {"uri": "postgres://pg/tollgate"}}));
    assert!(
        e.contains("at '/database': additional properties 'uri' not allowed"),
        "{e}"
    );
}

#[test]
fn refuses_redis_without_a_database() {
    let e = refused(json!({"redis": {"url": "redis://redis:6379"}}));
    assert!(e.contains("at '/database': missing property"), "{e}");
    assert!(e.contains("redis needs database"), "{e}");
}

#[test]
fn refuses_polar_without_its_webhook_secret() {
    let e = refused(json!({"polar": {"enabled": true}}));
    assert!(
        e.contains("at '/polar': missing property 'webhookSecret or existingSecret"),
        "{e}"
    );
}

#[test]
fn refuses_chart_owned_and_unknown_settings_in_config() {
    let e = refused(json!({"config": {"listen": "0.0.0.0:1"}}));
    assert!(
        e.contains("at '/config': additional properties 'listen' not allowed"),
        "{e}"
    );
    let e = refused(json!({"config": {"admin_token": "x".repeat(40)}}));
    assert!(e.contains("'admin_token' not allowed"), "{e}");
    let e = refused(json!({"config": {"key_cache_secs": 5}}));
    assert!(e.contains("'key_cache_secs' not allowed"), "{e}");
}

#[test]
fn refuses_a_wrong_database_url_without_printing_it() {
    let e = refused(json!({"database": {"url": "mysql://root:hunter2@db/tollgate"}}));
    assert!(
        e.contains("database.url must start with postgres://"),
        "{e}"
    );
    assert!(!e.contains("hunter2"), "{e}");
}

/// Every server setting (a key of src/config.default.toml) is either one the
/// chart sets (in config.toml or as a TOLLGATE_* variable from a Secret) or
/// one `config` lets a user set: a new setting cannot be forgotten here.
#[test]
fn every_server_setting_is_set_by_the_chart_or_allowed_in_config() {
    let defaults =
        std::fs::read_to_string(Path::new(PROJECT).join("src/config.default.toml")).unwrap();
    let settings: std::collections::BTreeSet<&str> = defaults
        .lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| l.split_once(" = ").map(|(k, _)| k.trim()))
        .collect();
    let schema: Value = serde_json::from_str(
        &std::fs::read_to_string(Path::new(PROJECT).join("helm/tollgate/values.schema.json"))
            .unwrap(),
    )
    .unwrap();
    let mut covered: std::collections::BTreeSet<String> =
        schema["properties"]["config"]["properties"]
            .as_object()
            .unwrap()
            .keys()
            .cloned()
            .collect();
    let manifests = render(super::production_urls(), &[]).unwrap();
    let configmap = find(&manifests, "ConfigMap", "server");
    let written: Vec<String> = configmap["data"]["config.toml"]
        .as_str()
        .unwrap()
        .lines()
        .filter_map(|l| l.split_once(" = ").map(|(k, _)| k.trim().to_owned()))
        .collect();
    let server = container(find(&manifests, "Deployment", "server"));
    let from_env = server["env"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|e| e["name"].as_str()?.strip_prefix("TOLLGATE_"))
        .map(str::to_ascii_lowercase);
    covered.extend(written);
    covered.extend(from_env);
    for setting in &settings {
        assert!(
            covered.contains(*setting),
            "the chart neither sets nor allows the server setting {setting}"
        );
    }
    // And the chart allows nothing the server does not know.
    for key in &covered {
        assert!(
            settings.contains(key.as_str()) || key == "config",
            "the chart sets {key}, which is not a server setting"
        );
    }
}
