//! Presence across nodes, kept in Redis.
//!
//! Each node records, for every user with a session on it, "online here until T" and renews it
//! every [`REFRESH`]; a record not renewed for [`TTL`] — its node died — is swept by any node.
//! Whether a change makes a user come online or go offline *anywhere* is decided inside one Lua
//! script, which also publishes the change: two nodes can never both announce it, and every node
//! hears it once, in the order Redis decided.
//!
//! Keys (one Redis, not Redis Cluster — the scripts compute keys):
//! - `switchboard:presence:<["account","user"]>` — hash of node → expiry (Unix ms);
//! - `switchboard:online:<account>` — set of the account's users with any record;
//! - `switchboard:presence-expiry` — sorted set of `<node> <["account","user"]>` by expiry;
//! - `switchboard:presence-decided` — the stamp of the last decision (see [`DECIDED`]).

use std::time::Duration;

use redis::aio::MultiplexedConnection;
use redis::{RedisResult, Script};

use crate::ids::{AccountId, UserId};

/// How long a node's record of a user lasts without renewal.
pub const TTL: Duration = Duration::from_secs(15);
/// How often a node renews its records (and sweeps expired ones).
pub const REFRESH: Duration = Duration::from_secs(5);
/// Records renewed per script call.
const REFRESH_BATCH: usize = 500;
/// Expired records swept per script call.
const SWEEP_BATCH: usize = 500;

/// Stamps a decision with Redis's clock, in microseconds, strictly increasing (a decision in the
/// same microsecond as the last, or a clock set back, gets the last one's stamp plus one). A
/// string of digits: Lua's numbers are doubles, exact to 2^53, and `cjson` would print them
/// with 14 digits.
const DECIDED: &str = r#"
local function decided()
  local t = redis.call('TIME')
  local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
  local last = tonumber(redis.call('GET', 'switchboard:presence-decided') or '0')
  if now <= last then now = last + 1 end
  local stamp = string.format('%.0f', now)
  redis.call('SET', 'switchboard:presence-decided', stamp)
  return stamp
end
"#;

/// Marks users online on `node` until `ARGV[2]`; publishes `online` for each who had no live
/// record anywhere. ARGV: now, expires, node, then (pair, account, user) per user.
const UP: &str = r#"
local now, expires, node = tonumber(ARGV[1]), ARGV[2], ARGV[3]
local came = 0
for i = 4, #ARGV, 3 do
  local pair, account, user = ARGV[i], ARGV[i + 1], ARGV[i + 2]
  local key = 'switchboard:presence:' .. pair
  local live = false
  local fields = redis.call('HGETALL', key)
  for j = 2, #fields, 2 do
    if tonumber(fields[j]) > now then live = true end
  end
  redis.call('HSET', key, node, expires)
  redis.call('ZADD', 'switchboard:presence-expiry', expires, node .. ' ' .. pair)
  redis.call('SADD', 'switchboard:online:' .. account, user)
  if not live then
    came = came + 1
    redis.call('PUBLISH', 'switchboard:events',
      cjson.encode({presence = {account = account, user = user, online = true,
      decided = decided()}}))
  end
end
return came
"#;

/// Removes `node`'s record of a user; publishes `offline` if no live record is left.
/// ARGV: now, node, pair, account, user.
const DOWN: &str = r#"
local now, node, pair, account, user = tonumber(ARGV[1]), ARGV[2], ARGV[3], ARGV[4], ARGV[5]
local key = 'switchboard:presence:' .. pair
redis.call('HDEL', key, node)
redis.call('ZREM', 'switchboard:presence-expiry', node .. ' ' .. pair)
local fields = redis.call('HGETALL', key)
for j = 2, #fields, 2 do
  if tonumber(fields[j]) > now then return 0 end
end
redis.call('DEL', key)
redis.call('SREM', 'switchboard:online:' .. account, user)
redis.call('PUBLISH', 'switchboard:events',
  cjson.encode({presence = {account = account, user = user, online = false,
  decided = decided()}}))
return 1
"#;

/// Removes expired records (of nodes that stopped renewing them); publishes `offline` for users
/// left with none. ARGV: now, limit.
const SWEEP: &str = r#"
local now = tonumber(ARGV[1])
local expired = redis.call('ZRANGEBYSCORE', 'switchboard:presence-expiry', '-inf', now,
  'LIMIT', 0, ARGV[2])
local gone = 0
for _, member in ipairs(expired) do
  redis.call('ZREM', 'switchboard:presence-expiry', member)
  local space = string.find(member, ' ', 1, true)
  local node, pair = string.sub(member, 1, space - 1), string.sub(member, space + 1)
  local key = 'switchboard:presence:' .. pair
  local expires = tonumber(redis.call('HGET', key, node))
  if expires and expires <= now then
    redis.call('HDEL', key, node)
    local live = false
    local fields = redis.call('HGETALL', key)
    for j = 2, #fields, 2 do
      if tonumber(fields[j]) > now then live = true end
    end
    if not live then
      redis.call('DEL', key)
      local ids = cjson.decode(pair)
      redis.call('SREM', 'switchboard:online:' .. ids[1], ids[2])
      redis.call('PUBLISH', 'switchboard:events',
        cjson.encode({presence = {account = ids[1], user = ids[2], online = false,
          decided = decided()}}))
      gone = gone + 1
    end
  end
end
return gone
"#;

/// The scripts, hashed once.
pub struct Scripts {
    up: Script,
    down: Script,
    sweep: Script,
}

impl Default for Scripts {
    fn default() -> Self {
        Self {
            up: Script::new(&format!("{DECIDED}{UP}")),
            down: Script::new(&format!("{DECIDED}{DOWN}")),
            sweep: Script::new(&format!("{DECIDED}{SWEEP}")),
        }
    }
}

/// The account and user as one unambiguous string (ids may contain any separator).
fn pair(account: &AccountId, user: &UserId) -> String {
    serde_json::to_string(&(account.as_str(), user.as_str())).expect("strings serialize")
}

fn presence_key(account: &AccountId, user: &UserId) -> String {
    format!("switchboard:presence:{}", pair(account, user))
}

impl Scripts {
    /// Marks the users online on `node` (renewing their records); returns how many came online.
    pub async fn up<'a>(
        &self,
        conn: &mut MultiplexedConnection,
        node: &str,
        users: impl ExactSizeIterator<Item = (&'a AccountId, &'a UserId)>,
    ) -> RedisResult<u64> {
        let now = crate::store::now_ms();
        let mut call = self.up.prepare_invoke();
        call.arg(now).arg(now + TTL.as_millis() as i64).arg(node);
        for (account, user) in users {
            call.arg(pair(account, user))
                .arg(account.as_str())
                .arg(user.as_str());
        }
        call.invoke_async(conn).await
    }

    /// Renews every record of `node`, in batches; users whose records had been swept (Redis
    /// lost them, or this node was cut off for longer than [`TTL`]) come online again.
    pub async fn renew(
        &self,
        conn: &mut MultiplexedConnection,
        node: &str,
        users: &[(AccountId, UserId)],
    ) -> RedisResult<()> {
        for chunk in users.chunks(REFRESH_BATCH) {
            self.up(conn, node, chunk.iter().map(|(a, u)| (a, u)))
                .await?;
        }
        Ok(())
    }

    /// Removes `node`'s record of the user; `true` if that took them offline everywhere.
    pub async fn down(
        &self,
        conn: &mut MultiplexedConnection,
        node: &str,
        account: &AccountId,
        user: &UserId,
    ) -> RedisResult<bool> {
        self.down
            .prepare_invoke()
            .arg(crate::store::now_ms())
            .arg(node)
            .arg(pair(account, user))
            .arg(account.as_str())
            .arg(user.as_str())
            .invoke_async(conn)
            .await
    }

    /// Sweeps records that were not renewed in time; returns how many users went offline.
    pub async fn sweep(&self, conn: &mut MultiplexedConnection) -> RedisResult<u64> {
        self.sweep
            .prepare_invoke()
            .arg(crate::store::now_ms())
            .arg(SWEEP_BATCH)
            .invoke_async(conn)
            .await
    }
}

/// The account's users with a live record on any node, sorted.
pub async fn online_users(
    conn: &mut MultiplexedConnection,
    account: &AccountId,
) -> RedisResult<Vec<String>> {
    let users: Vec<String> = redis::cmd("SMEMBERS")
        .arg(format!("switchboard:online:{account}"))
        .query_async(conn)
        .await?;
    let mut pipe = redis::pipe();
    let ids: Vec<UserId> = users.iter().filter_map(|u| UserId::new(u).ok()).collect();
    for user in &ids {
        pipe.cmd("HVALS").arg(presence_key(account, user));
    }
    let expiries: Vec<Vec<i64>> = pipe.query_async(conn).await?;
    let now = crate::store::now_ms();
    let mut online: Vec<String> = ids
        .into_iter()
        .zip(expiries)
        .filter(|(_, expiries)| expiries.iter().any(|e| *e > now))
        .map(|(user, _)| user.as_str().to_owned())
        .collect();
    online.sort();
    Ok(online)
}
