// The Lua scripts of RedisStore: every read-modify-write on a job or an Idempotency-Key record runs as one of these.
import { createHash } from 'node:crypto';

/** A script and its SHA1, computed once at load so calls go out as EVALSHA. */
export interface Script {
  readonly name: string;
  readonly lua: string;
  readonly sha: string;
}

function script(name: string, lua: string): Script {
  return { name, lua, sha: createHash('sha1').update(lua).digest('hex') };
}

// Job hash fields hold JSON-encoded values, so a status reads `"running"` (quotes included) in Lua.
// On Redis Cluster each script touches the keys of one job (or one record) only, which share a hash
// slot, and the client writes the listing indexes after it. Outside a Cluster the scripts that
// change a job's status or owner also move its index entries, in the same atomic step. One owner's
// index of a status is named after every job's index of that status, ':' and the owner as the hash
// stores it (JSON): START_JOB and FINISH_JOB, whose caller does not know the owner, name that key
// from the hash without decoding the owner (cjson refuses some strings JavaScript allows). Only
// outside a Cluster, where Redis runs a script on keys it was not given.
//
// The scripts that change what a watcher shows (progress, start, finish, restart, a log line, a
// delete) PUBLISH on the job's hash key as channel once the change is applied, with the kind of
// change as message (RedisChangeFeed PSUBSCRIBEs to them all): inside the script, so the message
// costs no round trip and goes out exactly when the change does. A channel is not a key, so this
// holds on a Cluster too (PUBLISH reaches every node).

export const CREATE_JOB = script(
  'createJob',
  `--[[
  Creates a job's hash unless the id is taken, with the request it was given (queue mode), and
  (outside a Cluster) lists it in the same step.
  KEYS[1] job hash, KEYS[2] its request (same slot); outside a Cluster also KEYS[3] every job,
  KEYS[4] its owner's index, KEYS[5] every job in its status, KEYS[6] its owner's jobs in its
  status, KEYS[7] the expiries (on a Cluster those live in other slots and the client writes them after)
  ARGV[1] epoch ms at which the hash expires, or '' for none (only jobs created final have one)
  ARGV[2] the index member, ARGV[3] the expiries entry
  ARGV[4] '1' when ARGV[5] holds the request's bytes (it may be empty), '' when there is none
  ARGV[6..] field, value pairs (values JSON-encoded)
  Returns 1 when created, 0 when a job with that id exists (its request untouched).
]]
if redis.call('EXISTS', KEYS[1]) == 1 then return 0 end
redis.call('HSET', KEYS[1], unpack(ARGV, 6))
if ARGV[1] ~= '' then redis.call('PEXPIREAT', KEYS[1], ARGV[1]) end
if ARGV[4] == '1' then redis.call('SET', KEYS[2], ARGV[5]) end
if #KEYS == 7 then
  for i = 3, 6 do redis.call('ZADD', KEYS[i], 0, ARGV[2]) end
  if ARGV[1] ~= '' then redis.call('ZADD', KEYS[7], ARGV[1], ARGV[3]) end
end
return 1`,
);

export const UPDATE_PROGRESS = script(
  'updateProgress',
  `--[[
  Applies progress fields to a job that is not final.
  KEYS[1] job hash; with an owner to give and outside a Cluster also KEYS[2] the anonymous index,
  KEYS[3] that owner's index, KEYS[4] and KEYS[5] the anonymous queued and running indexes,
  KEYS[6] and KEYS[7] that owner's queued and running indexes
  ARGV[1] the owner to give a job that has none (JSON), or '' to leave the owner alone
  ARGV[2] ifAttempt: apply only if the job's attempt is this number, or '' for no check
  ARGV[3..] field, value pairs (may be none)
  Returns 0 when the job is unknown or final, or on another attempt; else 1, or {createdAt, status} (JSON) when ARGV[1]
  became its owner: outside a Cluster its index entries have moved, on a Cluster the caller moves them.
]]
local status = redis.call('HGET', KEYS[1], 'status')
if status ~= '"queued"' and status ~= '"running"' then return 0 end
-- A hash written before attempts were counted has none: it is on its first.
if ARGV[2] ~= '' and (tonumber(redis.call('HGET', KEYS[1], 'attempt')) or 1) ~= tonumber(ARGV[2]) then return 0 end
if #ARGV > 2 then redis.call('HSET', KEYS[1], unpack(ARGV, 3)) end
redis.call('PUBLISH', KEYS[1], 'progress')
if ARGV[1] ~= '' and redis.call('HGET', KEYS[1], 'owner') == 'null' then
  redis.call('HSET', KEYS[1], 'owner', ARGV[1])
  local createdAt = redis.call('HGET', KEYS[1], 'createdAt')
  if #KEYS == 7 then
    local member = cjson.decode(createdAt) .. ' ' .. cjson.decode(redis.call('HGET', KEYS[1], 'id'))
    local queued = status == '"queued"'
    redis.call('ZADD', KEYS[3], 0, member)
    redis.call('ZADD', queued and KEYS[6] or KEYS[7], 0, member)
    redis.call('ZREM', KEYS[2], member)
    redis.call('ZREM', queued and KEYS[4] or KEYS[5], member)
  end
  return {createdAt, status}
end
return 1`,
);

/**
 * Lua shared by startJob and takeJob: starts the queued job read into `job` (HMGET status,
 * createdAt, owner, id of KEYS[1]) with ARGV[1] startedAt, ARGV[2] leaseUntil, ARGV[3] leaseMs, and
 * when `indexed` holds (outside a Cluster) moves its entry from the `queued` index keys to the
 * `running` ones, its owner's included.
 */
function startQueued(queued: string, running: string, indexed: string): string {
  return `redis.call('HSET', KEYS[1], 'status', '"running"', 'startedAt', ARGV[1], 'leaseUntil', ARGV[2], 'leaseMs', ARGV[3])
redis.call('PUBLISH', KEYS[1], 'start')
if ${indexed} then
  local member = cjson.decode(job[2]) .. ' ' .. cjson.decode(job[4])
  redis.call('ZADD', ${running}, 0, member)
  redis.call('ZADD', ${running} .. ':' .. job[3], 0, member)
  redis.call('ZREM', ${queued}, member)
  redis.call('ZREM', ${queued} .. ':' .. job[3], member)
end`;
}

export const START_JOB = script(
  'startJob',
  `--[[
  Moves a queued job to running.
  KEYS[1] job hash; outside a Cluster also KEYS[2] every queued job and KEYS[3] every running job,
  where the job's entry moves in the same step (and in its owner's, named after them)
  ARGV[1] startedAt (JSON), ARGV[2] leaseUntil (JSON), ARGV[3] leaseUntil as epoch ms
  Returns {createdAt, owner} (JSON) when started, for the caller to move the index entries on a
  Cluster; nil when the job is unknown or not queued.
]]
local job = redis.call('HMGET', KEYS[1], 'status', 'createdAt', 'owner', 'id')
if job[1] ~= '"queued"' then return false end
${startQueued('KEYS[2]', 'KEYS[3]', '#KEYS == 3')}
return {job[2], job[3]}`,
);

export const TAKE_JOB = script(
  'takeJob',
  `--[[
  A queue worker's take in one step: the job, its request, and the start of a queued job.
  KEYS[1] job hash, KEYS[2] request (same slot); outside a Cluster also KEYS[3] every queued job and
  KEYS[4] every running job, where the entry of a job it starts moves (and in its owner's)
  ARGV[1] startedAt (JSON), ARGV[2] leaseUntil (JSON), ARGV[3] leaseUntil as epoch ms
  Returns nil when the job is unknown or final; else {1 when it started the job (0: it was
  running), the hash as HGETALL gives it after the start, the request or nil}.
]]
local job = redis.call('HMGET', KEYS[1], 'status', 'createdAt', 'owner', 'id')
if job[1] ~= '"queued"' and job[1] ~= '"running"' then return false end
local started = 0
if job[1] == '"queued"' then
  ${startQueued('KEYS[3]', 'KEYS[4]', '#KEYS == 4')}
  started = 1
end
return {started, redis.call('HGETALL', KEYS[1]), redis.call('GET', KEYS[2])}`,
);

export const RENEW_LEASES = script(
  'renewLeases',
  `--[[
  One process's heartbeat: renews the lease of each of its jobs that is still queued or running.
  KEYS[1..n] job hashes
  ARGV[1] leaseUntil (JSON), ARGV[2] leaseUntil as epoch ms
  Returns the positions (1-based) in KEYS of the jobs not renewed: final or unknown.
]]
local gone = {}
for i, key in ipairs(KEYS) do
  local status = redis.call('HGET', key, 'status')
  if status == '"queued"' or status == '"running"' then
    redis.call('HSET', key, 'leaseUntil', ARGV[1], 'leaseMs', ARGV[2])
  else
    gone[#gone + 1] = i
  end
end
return gone`,
);

export const FINISH_JOB = script(
  'finishJob',
  `--[[
  The one final transition; from then on every key of the job expires with it, and its request
  (queue mode's, which no worker may replay any more) is dropped.
  KEYS[1] job hash, KEYS[2] log list, KEYS[3] result list, KEYS[4] request; outside a Cluster also
  KEYS[5] the expiries, KEYS[6] every queued job, KEYS[7] every running job, KEYS[8] every job in
  the final status: the job's entries are written in the same step, its owner's per-status ones
  named after KEYS[6..8] (on a Cluster the client writes them after)
  ARGV[1] expiresAt as epoch ms (PEXPIREAT of the hash, the log and the result)
  ARGV[2] ifLeaseExpiredBy as epoch ms, or '' for no lease condition
  ARGV[3] ifAttempt: apply only if the job's attempt is this number, or '' for no check
  ARGV[4..] field, value pairs to set (JSON-encoded): status, finishedAt, expiresAt, response,
            error, leaseUntil (null), and progress (100) for completed
  Returns {1, hash} with the updated hash as HGETALL gives it; {0, hash} with the job as it stands
  when it is final already, its lease has not passed by ARGV[2] (a null lease never passes) or it
  is not on attempt ARGV[3]; nil when the job is unknown.
]]
local status = redis.call('HGET', KEYS[1], 'status')
if not status then return false end
if status ~= '"queued"' and status ~= '"running"' then return {0, redis.call('HGETALL', KEYS[1])} end
if ARGV[2] ~= '' then
  local lease = tonumber(redis.call('HGET', KEYS[1], 'leaseMs'))
  if lease == nil or lease > tonumber(ARGV[2]) then return {0, redis.call('HGETALL', KEYS[1])} end
end
-- A hash written before attempts were counted has none: it is on its first.
if ARGV[3] ~= '' and (tonumber(redis.call('HGET', KEYS[1], 'attempt')) or 1) ~= tonumber(ARGV[3]) then
  return {0, redis.call('HGETALL', KEYS[1])}
end
redis.call('HSET', KEYS[1], 'leaseMs', '', unpack(ARGV, 4))
redis.call('PUBLISH', KEYS[1], 'finish')
local job = redis.call('HGETALL', KEYS[1])
-- Read before PEXPIREAT: an expiresAt already past (a short ttl, a clock behind Redis's) deletes the keys at once.
local owner, createdAt, id = unpack(redis.call('HMGET', KEYS[1], 'owner', 'createdAt', 'id'))
for i = 1, 3 do redis.call('PEXPIREAT', KEYS[i], ARGV[1]) end
-- UNLINK: a request body of megabytes is freed off the main thread, as deleteJob frees a result.
redis.call('UNLINK', KEYS[4])
if #KEYS == 8 then
  -- The entry the client would write: [owner, "<createdAt> <id>"], owner as stored (JSON).
  local member = cjson.decode(createdAt) .. ' ' .. cjson.decode(id)
  redis.call('ZADD', KEYS[5], ARGV[1], '[' .. owner .. ',' .. cjson.encode(member) .. ']')
  local from = status == '"queued"' and KEYS[6] or KEYS[7]
  redis.call('ZADD', KEYS[8], 0, member)
  redis.call('ZADD', KEYS[8] .. ':' .. owner, 0, member)
  redis.call('ZREM', from, member)
  redis.call('ZREM', from .. ':' .. owner, member)
end
return {1, job}`,
);

export const RESTART_JOB = script(
  'restartJob',
  `--[[
  Starts a running job again, as its next attempt, when its worker stopped renewing its lease (queue
  mode: another worker took the job over). The result starts over; the log, the warnings and
  errors counters, the owner and the request stay. The job stays running, so no index entry moves
  (the same keys on a Cluster and outside one). chunkToken stays too: an append of the dead worker
  that ioredis resends now finds its token and appends nothing.
  KEYS[1] job hash, KEYS[2] result list (same slot)
  ARGV[1] startedAt (JSON), ARGV[2] leaseUntil (JSON), ARGV[3] leaseUntil as epoch ms
  ARGV[4] ifLeaseExpiredBy as epoch ms
  Returns the hash after the restart as HGETALL gives it, or nil when the job is unknown, not
  running, or its lease has not passed by ARGV[4] (a null lease never passes).
]]
local job = redis.call('HMGET', KEYS[1], 'status', 'leaseMs', 'attempt')
if job[1] ~= '"running"' then return false end
local lease = tonumber(job[2])
if lease == nil or lease > tonumber(ARGV[4]) then return false end
-- A hash written before attempts were counted has none: it was on its first.
local attempt = (tonumber(job[3]) or 1) + 1
redis.call('HSET', KEYS[1], 'attempt', tostring(attempt), 'startedAt', ARGV[1], 'leaseUntil', ARGV[2], 'leaseMs', ARGV[3],
  'progress', '0', 'message', 'null', 'resultCount', '0', 'response', 'null', 'resultBytes', '0')
-- UNLINK: a result of megabytes is freed off the main thread, as deleteJob frees one.
redis.call('UNLINK', KEYS[2])
redis.call('PUBLISH', KEYS[1], 'restart')
return redis.call('HGETALL', KEYS[1])`,
);

export const APPEND_LOG = script(
  'appendLog',
  `--[[
  Appends a log line to a job that is not final, counting warnings and errors in the same step.
  KEYS[1] job hash, KEYS[2] log list
  ARGV[1] the line (JSON), ARGV[2] the counter to increment: 'warnings', 'errors' or ''
  ARGV[3] a token unique to this append: a call that ioredis resends after a reconnect (its first
          run applied, its reply lost) finds its token already recorded and appends nothing
  Returns the line's sequence number (the list's new length: lines are never trimmed), or nil
  when the job is unknown or final.
]]
local status = redis.call('HGET', KEYS[1], 'status')
if status ~= '"queued"' and status ~= '"running"' then return false end
if redis.call('HGET', KEYS[1], 'logToken') == ARGV[3] then return redis.call('LLEN', KEYS[2]) end
local seq = redis.call('RPUSH', KEYS[2], ARGV[1])
if ARGV[2] ~= '' then redis.call('HINCRBY', KEYS[1], ARGV[2], 1) end
redis.call('HSET', KEYS[1], 'logToken', ARGV[3])
redis.call('PUBLISH', KEYS[1], 'log')
return seq`,
);

export const APPEND_RESULT = script(
  'appendResult',
  `--[[
  Appends one chunk to the result of a job that is not final. A final job's keys already carry
  their TTL; refusing here keeps a late chunk from creating a key that never expires.
  KEYS[1] job hash, KEYS[2] result list
  ARGV[1] the chunk (bytes)
  ARGV[2] a token unique to this append: a resent call (see appendLog) appends nothing
  ARGV[3] the attempt the appending run is on; absent or '' for no check (last, so a caller that
          predates attempts, passing two arguments, appends as before)
  ARGV[4] how many result bytes the run had stored before this piece; absent or '' for no check.
          Only the part past the bytes held (resultBytes) is appended, so a retried call stores
          nothing twice
  Returns the number of chunks stored, 0 when the job is unknown or final, -1 (nothing
  appended) when it is not on attempt ARGV[3] (a restart gave it to another run), or -2 when
  ARGV[4] is past the bytes held (a gap).
]]
local status = redis.call('HGET', KEYS[1], 'status')
if status ~= '"queued"' and status ~= '"running"' then return 0 end
-- Checked before the token: a resent append of the earlier attempt is as stale as its first run.
if ARGV[3] and ARGV[3] ~= '' and (tonumber(redis.call('HGET', KEYS[1], 'attempt')) or 1) ~= tonumber(ARGV[3]) then return -1 end
if redis.call('HGET', KEYS[1], 'chunkToken') == ARGV[2] then return redis.call('LLEN', KEYS[2]) end
local piece = ARGV[1]
if ARGV[4] and ARGV[4] ~= '' then
  local held = tonumber(redis.call('HGET', KEYS[1], 'resultBytes')) or 0
  local at = tonumber(ARGV[4])
  if at > held then return -2 end
  if held - at >= #piece then return redis.call('LLEN', KEYS[2]) end
  if held > at then piece = string.sub(piece, held - at + 1) end
end
local length = redis.call('RPUSH', KEYS[2], piece)
redis.call('HINCRBY', KEYS[1], 'resultBytes', #piece)
redis.call('HSET', KEYS[1], 'chunkToken', ARGV[2])
return length`,
);

export const RESULT_LENGTH = script(
  'resultLength',
  `--[[
  How many chunks a job's result has, read together with the job's existence.
  KEYS[1] job hash, KEYS[2] result list
  Returns the chunk count (0 for an empty body), or -1 when the job is gone.
]]
if redis.call('EXISTS', KEYS[1]) == 0 then return -1 end
return redis.call('LLEN', KEYS[2])`,
);

export const READ_REQUEST = script(
  'readRequest',
  `--[[
  The request a job was created with (queue mode), read together with the job's status: a final
  job has none, even if a process of an older version finished it without dropping the key.
  KEYS[1] job hash, KEYS[2] request
  Returns the request's bytes, or nil when the job is unknown or final, or was created without one.
]]
local status = redis.call('HGET', KEYS[1], 'status')
if status ~= '"queued"' and status ~= '"running"' then return false end
return redis.call('GET', KEYS[2])`,
);

export const DELETE_JOB = script(
  'deleteJob',
  `--[[
  Forgets a job, its log, its result and its request (UNLINK: a big result is freed off the main thread).
  KEYS[1] job hash, KEYS[2] log list, KEYS[3] result list, KEYS[4] request
  Returns {createdAt, owner} (JSON) of the deleted job, to drop it from the listing indexes, or
  nil when the job is unknown.
]]
local fields = redis.call('HMGET', KEYS[1], 'createdAt', 'owner')
if not fields[1] then return false end
redis.call('UNLINK', KEYS[1], KEYS[2], KEYS[3], KEYS[4])
redis.call('PUBLISH', KEYS[1], 'delete')
return fields`,
);

export const CLAIM_KEY = script(
  'claimIdempotencyKey',
  `--[[
  Claims an Idempotency-Key: wins when there is no record, or it has expired. A running record
  whose lease has passed is returned like any other: its job may have answered, so the guard
  looks at that job before it releases the record (never a takeover here).
  KEYS[1] record hash
  ARGV[1] now (epoch ms, the caller's clock, which also set the leases)
  ARGV[2] fingerprint, ARGV[3] jobId, ARGV[4] leaseUntil, ARGV[5] expiresAt (epoch ms)
  ARGV[6] expiresAt rounded up to an integer, for PEXPIREAT
  Returns {1} when the claim wins, else {0, fingerprint, jobId, state, leaseUntil, expiresAt}.
]]
local now = tonumber(ARGV[1])
local r = redis.call('HMGET', KEYS[1], 'fingerprint', 'jobId', 'state', 'leaseUntil', 'expiresAt')
if r[1] and tonumber(r[5]) > now then
  return {0, r[1], r[2], r[3], r[4], r[5]}
end
redis.call('HSET', KEYS[1], 'fingerprint', ARGV[2], 'jobId', ARGV[3], 'state', 'running', 'leaseUntil', ARGV[4], 'expiresAt', ARGV[5])
redis.call('PEXPIREAT', KEYS[1], ARGV[6])
return {1}`,
);

export const RENEW_KEY = script(
  'renewIdempotencyKey',
  `--[[
  Extends a running claim held by this job.
  KEYS[1] record hash
  ARGV[1] jobId, ARGV[2] leaseUntil (epoch ms), ARGV[3] now (epoch ms)
  Returns 1 when renewed, 0 when the record is gone, expired, done, or held by another job.
]]
local r = redis.call('HMGET', KEYS[1], 'jobId', 'state', 'expiresAt')
if r[1] ~= ARGV[1] or r[2] ~= 'running' or tonumber(r[3]) <= tonumber(ARGV[3]) then return 0 end
redis.call('HSET', KEYS[1], 'leaseUntil', ARGV[2])
return 1`,
);

export const COMPLETE_KEY = script(
  'completeIdempotencyKey',
  `--[[
  Marks the claim held by this job done, kept until a new expiry.
  KEYS[1] record hash
  ARGV[1] jobId, ARGV[2] expiresAt (epoch ms), ARGV[3] expiresAt rounded up, ARGV[4] now (epoch ms)
  Returns 1 when completed, 0 when the record is gone, expired, or held by another job.
]]
local r = redis.call('HMGET', KEYS[1], 'jobId', 'expiresAt')
if r[1] ~= ARGV[1] or tonumber(r[2]) <= tonumber(ARGV[4]) then return 0 end
redis.call('HSET', KEYS[1], 'state', 'done', 'expiresAt', ARGV[2])
redis.call('PEXPIREAT', KEYS[1], ARGV[3])
return 1`,
);

export const RELEASE_KEY = script(
  'releaseIdempotencyKey',
  `--[[
  Deletes the record if this job holds it, so the key is new again.
  KEYS[1] record hash
  ARGV[1] jobId
  Returns 1 when deleted, 0 when the record is gone or held by another job.
]]
if redis.call('HGET', KEYS[1], 'jobId') ~= ARGV[1] then return 0 end
redis.call('DEL', KEYS[1])
return 1`,
);
