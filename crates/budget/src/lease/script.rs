//! The sync script (`sync.lua`) on a real Redis: arguments in, [`SyncReply`] out.

use redis::aio::ConnectionLike;
use redis::{ErrorKind, RedisError, RedisResult, Script};

use super::model::{SyncReply, SyncRequest};
use crate::Month;

/// The script and the key base of one budget scope.
#[derive(Debug)]
pub(crate) struct SyncScript {
    script: Script,
    base: String,
}

impl SyncScript {
    /// Keys `<key_prefix>:{<scope>}:<YYYY-MM>:...`; the braces keep a scope's keys in
    /// one cluster slot.
    pub(crate) fn new(key_prefix: &str, scope: &str) -> Self {
        Self {
            script: Script::new(include_str!("sync.lua")),
            base: format!("{key_prefix}:{{{scope}}}"),
        }
    }

    /// Runs the script once (`EVALSHA`, loading it first after a Redis restart).
    pub(crate) async fn call(
        &self,
        connection: &mut impl ConnectionLike,
        request: &SyncRequest<'_>,
    ) -> RedisResult<SyncReply> {
        let mut invocation = self.script.prepare_invoke();
        invocation
            .arg(&self.base)
            .arg(request.replica)
            .arg(request.limit)
            .arg(request.lease_month.map_or(-1, |m| i64::from(m.key())))
            .arg(request.unspent)
            .arg(request.returned)
            .arg(request.min_lease)
            .arg(request.max_lease)
            .arg(request.need)
            .arg(request.ttl_ms)
            .arg(request.now_ms.map(|ms| ms.to_string()).unwrap_or_default())
            .arg(request.settlements.len());
        for (month, cumulative) in &request.settlements {
            invocation.arg(month.key()).arg(*cumulative);
        }
        let values: Vec<i64> = invocation.invoke_async(connection).await?;
        let field = |i: usize| {
            values
                .get(i)
                .and_then(|v| u64::try_from(*v).ok())
                .ok_or_else(|| {
                    RedisError::from((
                        ErrorKind::UnexpectedReturnType,
                        "the budget lease script answered something unexpected",
                        format!("{values:?}"),
                    ))
                })
        };
        Ok(SyncReply {
            month: Month::from_key(u32::try_from(field(0)?).unwrap_or(0)),
            now_ms: field(1)?,
            granted: field(2)?,
            lease: field(3)?,
            settled: field(4)?,
            leased: field(5)?,
            target: field(6)?,
            live: field(7)?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::lease::model::tests::{steps, Driver, REPLICAS};
    use crate::lease::model::LeaseBook;
    use proptest::prelude::*;

    use crate::lease::redis_server::RedisServer;

    fn runtime() -> tokio::runtime::Runtime {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime")
    }

    /// The script and its Rust model answer every call of a random history the same:
    /// the invariant proved over the model holds for the script.
    #[test]
    fn the_script_and_the_model_agree() {
        let Some(server) = RedisServer::start() else {
            return;
        };
        let runtime = runtime();
        let client = redis::Client::open(server.url()).expect("url");
        let connection = runtime
            .block_on(client.get_multiplexed_async_connection())
            .expect("connect");
        let case = std::cell::Cell::new(0u32);
        let mut runner = proptest::test_runner::TestRunner::new(ProptestConfig {
            cases: 48,
            ..ProptestConfig::default()
        });
        let result = runner.run(&(steps(), 1u64..3_000), |(steps, limit)| {
            case.set(case.get() + 1);
            // A scope per case: every case starts from empty keys.
            let script = SyncScript::new("test", &format!("case-{}", case.get()));
            let mut connection = connection.clone();
            let mut book = LeaseBook::default();
            let mut driver = Driver::new();
            for step in &steps {
                match driver.request(&book, limit, step) {
                    Some(request) => {
                        let expected = book.sync(&request, 0);
                        let actual = runtime
                            .block_on(script.call(&mut connection, &request))
                            .map_err(|e| TestCaseError::fail(e.to_string()))?;
                        prop_assert_eq!(actual, expected, "{:?}", request);
                        let i = REPLICAS
                            .iter()
                            .position(|r| *r == request.replica)
                            .unwrap_or(0);
                        driver.months[i] = Some(actual.month);
                    }
                    None => {
                        if let crate::lease::model::tests::Step::Wait(ms) = step {
                            driver.now_ms += ms;
                        }
                    }
                }
            }
            Ok(())
        });
        if let Err(error) = result {
            panic!("{error}");
        }
    }

    #[test]
    fn the_month_comes_from_the_server_clock() {
        let Some(server) = RedisServer::start() else {
            return;
        };
        let runtime = runtime();
        let client = redis::Client::open(server.url()).expect("url");
        let mut connection = runtime
            .block_on(client.get_multiplexed_async_connection())
            .expect("connect");
        let script = SyncScript::new("test", "time");
        // A limit near 2^53: Lua's default number format would store 2e+15.
        let request = SyncRequest {
            replica: "r0",
            limit: 4_000_000_000_000_000,
            lease_month: None,
            unspent: 0,
            returned: 0,
            min_lease: 10,
            max_lease: 3_000_000_000_000_001,
            need: 0,
            ttl_ms: 1_000,
            now_ms: None,
            settlements: vec![],
        };
        let reply = runtime
            .block_on(script.call(&mut connection, &request))
            .expect("call");
        let now_ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64);
        assert!(reply.now_ms.abs_diff(now_ms) < 60_000, "{reply:?}");
        assert_eq!(reply.month, Month::from_unix_secs(reply.now_ms / 1000));
        assert_eq!(reply.lease, 2_000_000_000_000_000);
        let key = format!("test:{{time}}:{}:leases", reply.month);
        let stored = server.command(&["HGET", &key, "r0"]);
        assert_eq!(
            stored, "$16\r\n2000000000000000\r\n",
            "an integer, not a float"
        );
    }
}
