//! The connections to the shared Redis, one node or a Redis Cluster: one
//! multiplexed connection for the Verify path, held to the time budget, one
//! for everything else (flushes, sweeps, publishing changes), and clients
//! for the change channel. Every call the limiter makes touches one hash
//! slot, so it runs the same on both; only walking the whole keyspace
//! (SCAN) needs to visit every master.
use std::{path::Path, time::Duration};

use anyhow::Context;
use redis::{
    Cmd, IntoConnectionInfo, Pipeline, RedisFuture, TlsCertificates, Value,
    aio::{ConnectionLike, ConnectionManager, ConnectionManagerConfig},
    cluster::ClusterClient,
    cluster_async::ClusterConnection,
};

/// A connection to one Redis node or to a cluster (routed by key).
#[derive(Clone)]
pub enum RedisConn {
    Node(ConnectionManager),
    Cluster(ClusterConnection),
}

impl ConnectionLike for RedisConn {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match self {
            Self::Node(c) => c.req_packed_command(cmd),
            Self::Cluster(c) => c.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        cmd: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        match self {
            Self::Node(c) => c.req_packed_commands(cmd, offset, count),
            Self::Cluster(c) => c.req_packed_commands(cmd, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Self::Node(c) => c.get_db(),
            Self::Cluster(c) => c.get_db(),
        }
    }
}

/// Everything a server holds of the shared Redis.
pub struct SharedRedis {
    /// The Verify path's: answers past `redis_timeout_millis` are given up.
    pub hot: RedisConn,
    /// Flushes, sweeps and changes: patient.
    pub bulk: RedisConn,
    /// One client per seed node, for the change channel (a cluster forwards
    /// a message published anywhere to every node).
    pub subscribers: Vec<redis::Client>,
    cluster: bool,
    seeds: Vec<String>,
    /// PEM CAs trusted for rediss:// instead of the system's.
    ca: Option<Vec<u8>>,
}

/// A client for `url`, trusting `ca` (for rediss://) when given.
fn client(url: impl IntoConnectionInfo, ca: Option<&[u8]>) -> redis::RedisResult<redis::Client> {
    match ca {
        None => redis::Client::open(url),
        Some(ca) => redis::Client::build_with_tls(url, certificates(ca)),
    }
}

fn certificates(ca: &[u8]) -> TlsCertificates {
    TlsCertificates {
        client_tls: None,
        root_cert: Some(ca.to_vec()),
    }
}

/// How long a flush's or a sweep's Redis call may take.
const BULK_TIMEOUT: Duration = Duration::from_secs(5);

impl SharedRedis {
    /// `urls`: the node, or the cluster's seed nodes; `ca_file`: the CAs
    /// that rediss:// trusts, instead of the system's roots.
    pub async fn connect(
        urls: &[String],
        cluster: bool,
        budget: Duration,
        ca_file: Option<&Path>,
    ) -> anyhow::Result<Self> {
        let ca = ca_file
            .map(|f| {
                std::fs::read(f).with_context(|| format!("reading redis_ca_file {}", f.display()))
            })
            .transpose()?;
        let connect_timeout = budget.max(Duration::from_secs(1));
        let (hot, bulk) = if cluster {
            let client = |timeout| {
                let builder = ClusterClient::builder(urls.to_vec());
                match &ca {
                    Some(ca) => builder.certs(certificates(ca)),
                    None => builder,
                }
                .connection_timeout(connect_timeout)
                .response_timeout(timeout)
                .retries(1)
                .build()
                .context("parsing redis_url (the cluster's seed nodes)")
            };
            let hot = client(budget)?
                .get_async_connection()
                .await
                .context("connecting to the Redis Cluster (redis_url)")?;
            let bulk = client(BULK_TIMEOUT)?
                .get_async_connection()
                .await
                .context("connecting to the Redis Cluster (redis_url)")?;
            (RedisConn::Cluster(hot), RedisConn::Cluster(bulk))
        } else {
            let client = client(urls[0].as_str(), ca.as_deref()).context("parsing redis_url")?;
            let manager = |timeout| {
                ConnectionManager::new_with_config(
                    client.clone(),
                    ConnectionManagerConfig::new()
                        .set_connection_timeout(connect_timeout)
                        .set_response_timeout(timeout)
                        .set_number_of_retries(1)
                        .set_max_delay(1000),
                )
            };
            let hot = manager(budget)
                .await
                .context("connecting to Redis (redis_url)")?;
            let bulk = manager(BULK_TIMEOUT)
                .await
                .context("connecting to Redis (redis_url)")?;
            (RedisConn::Node(hot), RedisConn::Node(bulk))
        };
        let subscribers = urls
            .iter()
            .map(|u| client(u.as_str(), ca.as_deref()))
            .collect::<Result<_, _>>()
            .context("parsing redis_url")?;
        Ok(Self {
            hot,
            bulk,
            subscribers,
            cluster,
            seeds: urls.to_vec(),
            ca,
        })
    }

    /// A connection to each master, to walk the whole keyspace: the node
    /// itself, or every master the cluster lists now.
    pub async fn masters(&self) -> redis::RedisResult<Vec<RedisConn>> {
        if !self.cluster {
            return Ok(vec![self.bulk.clone()]);
        }
        let mut conn = self.bulk.clone();
        let nodes: String = redis::cmd("CLUSTER")
            .arg("NODES")
            .query_async(&mut conn)
            .await?;
        // Same scheme (TLS or not) as the seeds.
        let scheme = if self.seeds[0].starts_with("rediss://") {
            "rediss"
        } else {
            "redis"
        };
        let mut masters = Vec::new();
        for addr in master_addresses(&nodes) {
            let info = format!("{scheme}://{addr}").into_connection_info()?;
            let client = client(info, self.ca.as_deref())?;
            masters.push(RedisConn::Node(
                ConnectionManager::new_with_config(
                    client,
                    ConnectionManagerConfig::new().set_response_timeout(BULK_TIMEOUT),
                )
                .await?,
            ));
        }
        Ok(masters)
    }
}

/// The `host:port` of every master `CLUSTER NODES` lists as healthy.
fn master_addresses(nodes: &str) -> Vec<String> {
    nodes
        .lines()
        .filter_map(|line| {
            let mut fields = line.split_whitespace();
            let addr = fields.nth(1)?;
            let flags = fields.next()?;
            let master = flags.split(',').any(|f| f == "master")
                && !flags.split(',').any(|f| f == "fail" || f == "noaddr");
            master.then(|| addr.split('@').next().unwrap_or(addr).to_owned())
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn masters_are_read_from_cluster_nodes() {
        let nodes = "\
07c37dfeb235213a872192d90877d0cd55635b91 127.0.0.1:30004@31004 slave e7d1eecce10fd6bb5eb35b9f99a514335d9ba9ca 0 1426238317239 4 connected
67ed2db8d677e59ec4a4cefb06858cf2a1a89fa1 127.0.0.1:30002@31002 master - 0 1426238316232 2 connected 5461-10922
292f8b365bb7edb5e285caf0b7e6ddc7265d2f4f 127.0.0.1:30003@31003 master - 0 1426238318243 3 connected 10923-16383
e7d1eecce10fd6bb5eb35b9f99a514335d9ba9ca 127.0.0.1:30001@31001 myself,master - 0 0 1 connected 0-5460
6ec23923021cf3ffec47632106199cb7f496ce01 127.0.0.1:30005@31005 master,fail - 0 1426238316232 5 connected
";
        assert_eq!(
            master_addresses(nodes),
            ["127.0.0.1:30002", "127.0.0.1:30003", "127.0.0.1:30001"]
        );
    }
}
