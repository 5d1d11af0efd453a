//! What the chart renders for each kind of install: embedded, production
//! with URLs or existing Secrets, and everything optional turned on.
use serde_json::{Value, json};

use super::*;

#[test]
fn lint_is_clean_in_strict_mode() {
    let (ok, report) = chart_py(&["lint"]);
    assert!(ok, "{report:#}");
    assert_eq!(report["messages"], json!([]), "{report:#}");
    assert_eq!(report["errors"], json!([]), "{report:#}");
}

#[test]
fn app_version_is_the_cargo_package_version() {
    let cargo = std::fs::read_to_string(Path::new(PROJECT).join("Cargo.toml")).unwrap();
    let package = cargo
        .split("\n[")
        .find(|section| section.trim_start_matches('[').starts_with("package]"))
        .expect("[package]");
    let version = package
        .lines()
        .find_map(|l| l.strip_prefix("version = "))
        .expect("package version")
        .trim()
        .trim_matches('"');
    let chart = std::fs::read_to_string(Path::new(PROJECT).join("helm/tollgate/Chart.yaml"))
        .expect("Chart.yaml");
    let app_version = chart
        .lines()
        .find_map(|l| l.strip_prefix("appVersion:"))
        .expect("appVersion")
        .trim()
        .trim_matches('"');
    assert_eq!(app_version, version, "Chart.yaml appVersion vs Cargo.toml");
    // And the image tag defaults to it.
    let manifests = render(json!({}), &[]).unwrap();
    let image = container(find(&manifests, "Deployment", "server"))["image"]
        .as_str()
        .unwrap()
        .to_owned();
    assert!(image.ends_with(&format!(":{version}")), "{image}");
}

#[test]
fn defaults_run_embedded_on_one_replica_with_a_volume() {
    let manifests = render_valid(json!({}), &[]);
    assert_server(&manifests);
    let deployment = find(&manifests, "Deployment", "server");
    assert_eq!(deployment["spec"]["replicas"], 1);
    assert_eq!(deployment["spec"]["strategy"]["type"], "Recreate");
    let configmap = find(&manifests, "ConfigMap", "server");
    assert_eq!(setting(configmap, "migrate_on_start"), Some("true"));
    assert_eq!(
        setting(configmap, "metrics_listen"),
        Some("\"0.0.0.0:9090\"")
    );
    let data_dir = setting(configmap, "data_dir").unwrap().trim_matches('"');
    // The SQLite file on the chart's claim, mounted at data_dir.
    let claim = find(&manifests, "PersistentVolumeClaim", "server");
    let pod = pod_spec(deployment);
    let volume = pod["volumes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|v| v["persistentVolumeClaim"]["claimName"] == claim["metadata"]["name"])
        .expect("the claim as a volume");
    let mount = container(deployment)["volumeMounts"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["name"] == volume["name"])
        .expect("the volume mounted");
    assert_eq!(mount["mountPath"], data_dir);
    assert!(mount.get("readOnly").is_none_or(|r| r == false));
    // No database: no migration Job, no URLs.
    assert!(!has(&manifests, "Job"), "{:?}", summary(&manifests));
    let c = container(deployment);
    assert!(
        c["env"]
            .as_array()
            .unwrap()
            .iter()
            .all(|e| e["name"] != "TOLLGATE_DATABASE_URL" && e["name"] != "TOLLGATE_REDIS_URL")
    );
    // A generated admin token, 48 characters, in the chart's Secret.
    let (secret, key) = secret_ref(c, "TOLLGATE_ADMIN_TOKEN");
    let token = base64_decode(
        named(&manifests, "Secret", &secret)["data"][&key]
            .as_str()
            .unwrap(),
    );
    assert_eq!(token.len(), 48);
    assert!(token.chars().all(|c| c.is_ascii_alphanumeric()));
    // Nothing optional without asking.
    for kind in [
        "HorizontalPodAutoscaler",
        "PodDisruptionBudget",
        "Ingress",
        "ServiceMonitor",
    ] {
        assert!(!has(&manifests, kind), "{kind}");
    }
    assert!(all(&manifests, "Deployment", "polar").is_empty());
    assert!(all(&manifests, "ConfigMap", "dashboard").is_empty());
}

#[test]
fn production_with_urls_runs_stateless_replicas_after_a_migration_job() {
    let manifests = render_valid(production_urls(), &[]);
    assert_server(&manifests);
    let deployment = find(&manifests, "Deployment", "server");
    assert_eq!(deployment["spec"]["replicas"], 3);
    assert_eq!(deployment["spec"]["strategy"]["type"], "RollingUpdate");
    assert!(!has(&manifests, "PersistentVolumeClaim"));
    let pod = pod_spec(deployment);
    assert!(
        pod["volumes"]
            .as_array()
            .unwrap()
            .iter()
            .all(|v| v.get("persistentVolumeClaim").is_none())
    );
    let configmap = find(&manifests, "ConfigMap", "server");
    assert_eq!(setting(configmap, "migrate_on_start"), Some("false"));
    // The URLs and the token from the chart's Secret.
    let c = container(deployment);
    let secret = named(&manifests, "Secret", "tollgate");
    for (var, url) in [
        (
            "TOLLGATE_DATABASE_URL",
            "postgres://tollgate:pw@pg:5432/tollgate",
        ),
        ("TOLLGATE_REDIS_URL", "redis://redis:6379"),
    ] {
        let (name, key) = secret_ref(c, var);
        assert_eq!(name, "tollgate");
        assert_eq!(base64_decode(secret["data"][&key].as_str().unwrap()), url);
    }
    assert_eq!(
        secret_ref(c, "TOLLGATE_ADMIN_TOKEN"),
        ("tollgate".into(), "admin-token".into())
    );
    // The migration Job: a pre-install/pre-upgrade hook reading only hook
    // copies made before it (lower weights), never the release's own Secret
    // and ConfigMap, which do not exist yet at pre-install.
    let job = find(&manifests, "Job", "migrate");
    assert_eq!(annotation(job, "helm.sh/hook"), "pre-install,pre-upgrade");
    assert_eq!(
        annotation(job, "helm.sh/hook-delete-policy"),
        "before-hook-creation"
    );
    let job_pod = pod_spec(job);
    assert_restricted(job_pod);
    assert_eq!(job_pod["restartPolicy"], "Never");
    assert!(job["spec"]["backoffLimit"].as_i64().unwrap() >= 1);
    let jc = container(job);
    assert_eq!(jc["command"], json!(["tollgate", "migrate"]));
    let (db_secret, db_key) = secret_ref(jc, "TOLLGATE_DATABASE_URL");
    let hook_secret = find(&manifests, "Secret", "migrate");
    assert_eq!(hook_secret["metadata"]["name"], db_secret.as_str());
    assert_eq!(
        base64_decode(hook_secret["data"][&db_key].as_str().unwrap()),
        "postgres://tollgate:pw@pg:5432/tollgate"
    );
    let hook_config = find(&manifests, "ConfigMap", "migrate");
    let config_volume = job_pod["volumes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|v| v.get("configMap").is_some())
        .expect("a config volume");
    assert_eq!(
        config_volume["configMap"]["name"],
        hook_config["metadata"]["name"]
    );
    assert_eq!(
        hook_config["data"]["config.toml"],
        configmap["data"]["config.toml"]
    );
    for copy in [hook_secret, hook_config] {
        assert_eq!(annotation(copy, "helm.sh/hook"), "pre-install,pre-upgrade");
        assert_eq!(
            annotation(copy, "helm.sh/hook-delete-policy"),
            "before-hook-creation,hook-succeeded"
        );
        assert!(hook_weight(copy) < hook_weight(job));
    }
    // The Job runs as no ServiceAccount of the release (not created yet).
    assert!(job_pod.get("serviceAccountName").is_none());
    // No test pod or server pod in the hook phase besides the Job.
    let hooks: Vec<_> = manifests
        .iter()
        .filter(|m| m["metadata"]["annotations"]["helm.sh/hook"] == "pre-install,pre-upgrade")
        .map(|m| format!("{} {}", m["kind"], m["metadata"]["name"]))
        .collect();
    assert_eq!(hooks.len(), 3, "{hooks:?}");
}

#[test]
fn production_with_existing_secrets_reads_them_by_name_and_key() {
    let manifests = render_valid(
        json!({
            "replicaCount": 2,
            "database": {"existingSecret": "pg-credentials", "existingSecretKey": "uri"},
            "redis": {"existingSecret": "redis-credentials", "existingSecretKey": "url"},
            "adminToken": {"existingSecret": "tollgate-admin", "existingSecretKey": "token"},
        }),
        &[],
    );
    assert_server(&manifests);
    let c = container(find(&manifests, "Deployment", "server"));
    assert_eq!(
        secret_ref(c, "TOLLGATE_DATABASE_URL"),
        ("pg-credentials".into(), "uri".into())
    );
    assert_eq!(
        secret_ref(c, "TOLLGATE_REDIS_URL"),
        ("redis-credentials".into(), "url".into())
    );
    assert_eq!(
        secret_ref(c, "TOLLGATE_ADMIN_TOKEN"),
        ("tollgate-admin".into(), "token".into())
    );
    // Nothing secret left for the chart to make; the Job reads the user's
    // Secret, which exists before the install.
    assert!(!has(&manifests, "Secret"), "{:?}", summary(&manifests));
    let job = find(&manifests, "Job", "migrate");
    assert_eq!(
        secret_ref(container(job), "TOLLGATE_DATABASE_URL"),
        ("pg-credentials".into(), "uri".into())
    );
    assert_eq!(
        setting(find(&manifests, "ConfigMap", "server"), "migrate_on_start"),
        Some("false")
    );
}

#[test]
fn everything_on_polar_ingress_autoscaling_budget_monitor_and_dashboard() {
    let mut values = production_urls();
    values["autoscaling"] = json!({"enabled": true, "minReplicas": 3, "maxReplicas": 12});
    values["podDisruptionBudget"] = json!({"enabled": true, "maxUnavailable": 1});
    values["metrics"] =
        json!({"serviceMonitor": {"enabled": true}, "dashboard": {"enabled": true}});
    values["polar"] = json!({
        "enabled": true,
        "webhookSecret": "polar_whs_test",
        "ingress": {
            "enabled": true,
            "className": "nginx",
            "hosts": ["billing.example.com"],
            "tls": [{"secretName": "billing-tls", "hosts": ["billing.example.com"]}],
        },
    });
    let manifests = render_valid(values, MONITORING);
    assert_server(&manifests);
    let deployment = find(&manifests, "Deployment", "server");
    let server_labels = &deployment["spec"]["template"]["metadata"]["labels"];

    // The autoscaler owns the replica count.
    assert!(
        deployment["spec"].get("replicas").is_none(),
        "{deployment:#}"
    );
    let hpa = find(&manifests, "HorizontalPodAutoscaler", "server");
    assert_eq!(hpa["apiVersion"], "autoscaling/v2");
    assert_eq!(hpa["spec"]["scaleTargetRef"]["kind"], "Deployment");
    assert_eq!(
        hpa["spec"]["scaleTargetRef"]["name"],
        deployment["metadata"]["name"]
    );
    assert_eq!(hpa["spec"]["minReplicas"], 3);
    assert_eq!(hpa["spec"]["maxReplicas"], 12);

    let pdb = find(&manifests, "PodDisruptionBudget", "server");
    assert_eq!(pdb["spec"]["maxUnavailable"], 1);
    assert!(pdb["spec"].get("minAvailable").is_none());
    for (k, v) in pdb["spec"]["selector"]["matchLabels"].as_object().unwrap() {
        assert_eq!(&server_labels[k], v);
    }

    // The ServiceMonitor finds the metrics ports of the server's and the
    // adapter's Services.
    let monitor = find(&manifests, "ServiceMonitor", "server");
    let endpoint = &monitor["spec"]["endpoints"][0];
    assert_eq!(endpoint["port"], "metrics");
    assert_eq!(endpoint["path"], "/metrics");
    let selector = monitor["spec"]["selector"]["matchLabels"]
        .as_object()
        .unwrap();
    let scraped = manifests
        .iter()
        .filter(|m| m["kind"] == "Service")
        .filter(|m| {
            selector
                .iter()
                .all(|(k, v)| &m["metadata"]["labels"][k] == v)
        })
        .filter(|m| {
            m["spec"]["ports"]
                .as_array()
                .unwrap()
                .iter()
                .any(|p| p["name"] == "metrics")
        })
        .map(|m| m["metadata"]["name"].as_str().unwrap())
        .collect::<std::collections::BTreeSet<_>>();
    assert_eq!(
        scraped,
        ["tollgate", "tollgate-polar"].into_iter().collect()
    );

    // The Polar adapter.
    let polar = find(&manifests, "Deployment", "polar");
    assert_eq!(polar["spec"]["replicas"], 2);
    assert_restricted(pod_spec(polar));
    let pc = container(polar);
    assert_eq!(pc["command"], json!(["tollgate-polar"]));
    assert_eq!(
        env(pc, "TOLLGATE_POLAR_SERVER")["value"],
        "http://tollgate:50051"
    );
    assert_eq!(env(pc, "TOLLGATE_POLAR_LISTEN")["value"], "0.0.0.0:8080");
    assert_eq!(
        env(pc, "TOLLGATE_POLAR_METRICS_LISTEN")["value"],
        "0.0.0.0:9091"
    );
    assert_eq!(env(pc, "TOLLGATE_POLAR_LOG_FORMAT")["value"], "json");
    // It calls the server with the server's own admin token.
    assert_eq!(
        secret_ref(pc, "TOLLGATE_POLAR_ADMIN_TOKEN"),
        secret_ref(container(deployment), "TOLLGATE_ADMIN_TOKEN")
    );
    let (name, key) = secret_ref(pc, "TOLLGATE_POLAR_WEBHOOK_SECRET");
    assert_eq!(
        base64_decode(
            named(&manifests, "Secret", &name)["data"][&key]
                .as_str()
                .unwrap()
        ),
        "polar_whs_test"
    );
    assert_eq!(pc["livenessProbe"]["httpGet"]["path"], "/healthz");
    assert_eq!(pc["readinessProbe"]["httpGet"]["path"], "/readyz");
    assert!(
        pc["lifecycle"]["preStop"]["sleep"]["seconds"]
            .as_i64()
            .unwrap()
            > 0
    );
    let polar_service = find(&manifests, "Service", "polar");
    let polar_pod_labels = &polar["spec"]["template"]["metadata"]["labels"];
    for (k, v) in polar_service["spec"]["selector"].as_object().unwrap() {
        assert_eq!(&polar_pod_labels[k], v);
    }
    // Only the webhook path is exposed.
    let ingress = find(&manifests, "Ingress", "polar");
    assert_eq!(ingress["spec"]["ingressClassName"], "nginx");
    let rule = &ingress["spec"]["rules"][0];
    assert_eq!(rule["host"], "billing.example.com");
    let paths = rule["http"]["paths"].as_array().unwrap();
    assert_eq!(paths.len(), 1);
    assert_eq!(paths[0]["path"], "/webhooks/polar");
    assert_eq!(
        paths[0]["backend"]["service"]["name"],
        polar_service["metadata"]["name"]
    );
    assert_eq!(paths[0]["backend"]["service"]["port"]["name"], "http");
    assert_eq!(ingress["spec"]["tls"][0]["secretName"], "billing-tls");

    // The dashboard, for the Grafana sidecar.
    let dashboard = find(&manifests, "ConfigMap", "dashboard");
    assert_eq!(dashboard["metadata"]["labels"]["grafana_dashboard"], "1");
    let data = dashboard["data"].as_object().unwrap();
    assert_eq!(data.len(), 1);
    let json: Value = serde_json::from_str(data.values().next().unwrap().as_str().unwrap())
        .expect("the dashboard is JSON");
    assert_dashboard(&json);
}

/// The metric names the server and the adapter export (the dashboard may
/// use these, histograms with their _bucket/_sum/_count series, and no other).
const METRICS: &[&str] = &[
    "grpc_server_handled_total",
    "grpc_server_handling_seconds",
    "tollgate_verify_decisions_total",
    "tollgate_limiter_redis_call_seconds",
    "tollgate_limiter_redis_over_budget_total",
    "tollgate_limiter_fail_open_seconds_total",
    "tollgate_limiter_fail_open_calls_total",
    "tollgate_usage_unflushed_units",
    "tollgate_usage_flush_seconds",
    "tollgate_usage_flush_failures_total",
    "tollgate_key_cache_hits_total",
    "tollgate_key_cache_misses_total",
    "tollgate_changes_received_total",
    "tollgate_changes_reconnects_total",
    "tollgate_polar_deliveries_total",
    "tollgate_polar_server_call_seconds",
];

/// The metric names in a PromQL expression (label names such as
/// grpc_method do not start with these prefixes).
fn metric_names(expr: &str) -> Vec<&str> {
    expr.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_' || c == ':'))
        .filter(|t| t.starts_with("grpc_server_") || t.starts_with("tollgate_"))
        .collect()
}

fn assert_dashboard(dashboard: &Value) {
    let variables = dashboard["templating"]["list"].as_array().unwrap();
    assert!(variables.iter().any(|v| v["name"] == "datasource"
        && v["type"] == "datasource"
        && v["query"] == "prometheus"));
    let panels: Vec<&Value> = dashboard["panels"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|p| p["type"] != "row")
        .collect();
    let mut used = std::collections::BTreeSet::new();
    for panel in &panels {
        assert_eq!(
            panel["datasource"]["uid"], "${datasource}",
            "{}",
            panel["title"]
        );
        let targets = panel["targets"].as_array().expect("targets");
        assert!(!targets.is_empty(), "{}", panel["title"]);
        for target in targets {
            let expr = target["expr"].as_str().unwrap();
            let names = metric_names(expr);
            assert!(!names.is_empty(), "{expr}");
            for name in names {
                let base = ["_bucket", "_sum", "_count"]
                    .iter()
                    .find_map(|s| name.strip_suffix(s))
                    .filter(|b| METRICS.contains(b))
                    .unwrap_or(name);
                assert!(METRICS.contains(&base), "{name} in {expr}");
                used.insert(base);
            }
        }
    }
    // Every metric has a panel, and the panels asked for are there.
    let unused: Vec<_> = METRICS.iter().filter(|m| !used.contains(*m)).collect();
    assert!(unused.is_empty(), "no panel for {unused:?}");
    let titles: Vec<&str> = panels
        .iter()
        .map(|p| p["title"].as_str().unwrap())
        .collect();
    for wanted in [
        "Verify decisions by code",
        "Call latency by method (p50, p99)",
        "gRPC errors by code",
        "Key cache hit ratio",
        "Polar deliveries by outcome and status",
    ] {
        assert!(titles.contains(&wanted), "{wanted} not in {titles:?}");
    }
}

#[test]
fn service_monitor_only_where_the_cluster_serves_its_api() {
    let values = json!({"metrics": {"serviceMonitor": {"enabled": true}}});
    let without = render_valid(values.clone(), &[]);
    assert!(!has(&without, "ServiceMonitor"));
    let with = render_valid(values, MONITORING);
    assert!(has(&with, "ServiceMonitor"));
    // And never without metrics.
    let off = render(
        json!({"metrics": {"enabled": false, "serviceMonitor": {"enabled": true}}}),
        MONITORING,
    )
    .unwrap();
    assert!(!has(&off, "ServiceMonitor"));
    let configmap = find(&off, "ConfigMap", "server");
    assert_eq!(setting(configmap, "metrics_listen"), Some("\"\""));
    let service = named(&off, "Service", "tollgate");
    assert_eq!(service["spec"]["ports"].as_array().unwrap().len(), 1);
}

#[test]
fn a_config_change_rolls_the_pods() {
    let checksum = |values: Value| {
        let manifests = render(values, &[]).unwrap();
        let deployment = find(&manifests, "Deployment", "server");
        annotation(&deployment["spec"]["template"], "checksum/config").to_owned()
    };
    let base = checksum(json!({}));
    assert_eq!(base, checksum(json!({})), "stable for the same values");
    assert_ne!(base, checksum(json!({"config": {"key_cache_seconds": 10}})));
    assert_ne!(base, checksum(json!({"shutdownGraceSeconds": 40})));
}

#[test]
fn extra_settings_reach_config_toml_with_their_types() {
    let manifests = render_valid(
        json!({
            "config": {
                "key_cache_seconds": 10,
                "redis_failure": "closed",
                "log_filter": "info,tollgate=debug",
            },
            "shutdownGraceSeconds": 40,
            "otlpEndpoint": "http://otel-collector:4317",
        }),
        &[],
    );
    let configmap = find(&manifests, "ConfigMap", "server");
    // Integers stay integers (Helm reads every number as a float).
    assert_eq!(setting(configmap, "key_cache_seconds"), Some("10"));
    assert_eq!(setting(configmap, "shutdown_grace_seconds"), Some("40"));
    assert_eq!(setting(configmap, "redis_failure"), Some("\"closed\""));
    assert_eq!(
        setting(configmap, "log_filter"),
        Some("\"info,tollgate=debug\"")
    );
    assert_eq!(
        setting(configmap, "otlp_endpoint"),
        Some("\"http://otel-collector:4317\"")
    );
    let pod = pod_spec(find(&manifests, "Deployment", "server"));
    assert!(pod["terminationGracePeriodSeconds"].as_i64().unwrap() > 40);
}

#[test]
fn names_fit_a_long_release_name() {
    let mut values = production_urls();
    values["polar"] = json!({"enabled": true, "webhookSecret": "s", "ingress": {"enabled": true}});
    values["metrics"] = json!({"dashboard": {"enabled": true}});
    let values = values.to_string();
    // 53 characters, the longest release name Helm takes.
    let name = "a-release-name-as-long-as-helm-allows-which-is-53-chr";
    let (ok, printed) = chart_py(&["validate", "--values-json", &values, "--name", name]);
    assert!(ok, "{printed:#}");
    let names: Vec<&str> = printed["results"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["name"].as_str().unwrap())
        .collect();
    assert!(names.iter().all(|n| n.len() <= 63), "{names:?}");
    assert!(names.iter().any(|n| n.len() > 60), "{names:?}");
}
