#pragma once
// The session advisory locks outboxd takes, in one place: the poll source and
// the cdc source take them, `outboxd status` looks for their holders, and
// the tests take them as another instance would. Two-key locks
// (pg_try_advisory_lock(int, int)), so they never collide with an
// application's single-key ones; pg_locks shows them with objsubid = 2,
// classid = the class below, objid = the second key.

#include <cstdint>

namespace outboxd {

// "This outboxd instance relays this poll table": the second key is the
// table's oid modulo 2^31 - 1 (an int4).
inline constexpr int32_t kPollTableLockClass = 1868724324;
// Takes the poll table lock of the table whose oid is $1, without waiting;
// one boolean column.
inline constexpr const char* kTryLockPollTableSql =
    "SELECT pg_try_advisory_lock(1868724324, ($1::bigint % 2147483647)::int)";
// Gives the poll table lock of the table whose oid is $1 back.
inline constexpr const char* kUnlockPollTableSql =
    "SELECT pg_advisory_unlock(1868724324, ($1::bigint % 2147483647)::int)";
// The session holding the poll table lock of the table whose oid is $1:
// pid, application_name, client address (no row when none holds it).
inline constexpr const char* kPollTableLockHolderSql =
    "SELECT l.pid, a.application_name, host(a.client_addr) FROM pg_locks l "
    "LEFT JOIN pg_stat_activity a ON a.pid = l.pid "
    "WHERE l.locktype = 'advisory' AND l.classid = 1868724324 "
    "AND l.objid = ($1::bigint % 2147483647)::oid AND l.objsubid = 2 AND l.granted LIMIT 1";

// "This outboxd instance takes the initial snapshot of this slot": the
// second key is hashtext(slot name).
inline constexpr int32_t kCdcSnapshotLockClass = 1868724325;
// Takes the snapshot lock of the slot named $1, without waiting.
inline constexpr const char* kTryLockCdcSnapshotSql = "SELECT pg_try_advisory_lock(1868724325, hashtext($1))";

}  // namespace outboxd
