/*
 * mqlink_interest: a Mosquitto 2.0 plugin that keeps the broker's
 * subscription state for the mqlink agent.
 *
 * The broker tells its plugins about every SUBSCRIBE and UNSUBSCRIBE (as
 * access checks, MOSQ_EVT_ACL_CHECK) and every disconnection
 * (MOSQ_EVT_DISCONNECT). This plugin keeps, inside the broker, which
 * client holds which filter, and so knows at any moment what the region
 * wants: subscriptions made before the agent started or while it was
 * down, and offline persistent sessions. It hands the agent a snapshot on
 * request and then sequenced deltas, on the topic `$mqlink/interest`.
 *
 * The agent asks with a message on `$mqlink/interest/sync` (which also
 * marks its client as the agent: its own subscriptions are not interest)
 * and relays the broker's "Expiring client X" log lines on
 * `$mqlink/interest/expired` (the 2.0 plugin API does not expose a
 * session's expiry interval).
 *
 * Messages to the agent (big-endian integers; strings are a u16 length and
 * the bytes):
 *   "MQI1" u8 kind u64 epoch u64 seq  then
 *     kind 1, snapshot part: u8 last, u32 n, n strings   (the table at seq)
 *     kind 2, delta:         u32 adds, u32 removes, strings (seq - 1 -> seq)
 * `epoch` is new at every plugin start.
 *
 * Persistent sessions survive a broker restart (with `persistence true`);
 * so does this table, in `state_file` (written atomically, at most once a
 * second, checksummed; a bad file is reported and ignored).
 *
 * Options (plugin_opt_<name>):
 *   state_file   where the persistent sessions' filters are kept
 *   acl          allow | defer | auto (default auto): the answer to the
 *                broker's access checks. Mosquitto 2.0 denies anything
 *                every plugin defers, so on a broker without other access
 *                control this plugin must allow; on one with an acl_file or
 *                an access-control plugin it must defer (and be loaded
 *                first). `auto` reads the broker's configuration file
 *                (`-c`) and its include_dir for acl_file / other plugins.
 *   max_filters_per_client   default 10000; more are counted and ignored
 *
 * Everything runs on the broker's thread and never blocks it for long:
 * tables are hash maps, messages are built in memory, the state file is
 * small and written without fsync.
 */

#include <ctype.h>
#include <dirent.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <mosquitto.h>
#include <mosquitto_broker.h>
#include <mosquitto_plugin.h>

#define TOPIC "$mqlink/interest"
#define SYNC_TOPIC "$mqlink/interest/sync"
#define EXPIRED_TOPIC "$mqlink/interest/expired"
#define AGENT_SHARE "$share/mqlink-"
#define CHUNK_BYTES 65000u
#define MAX_STRING 65535u

/* ---- small containers ---- */

struct buf {
	unsigned char *data;
	size_t len, cap;
	bool failed;
};

static void buf_put(struct buf *b, const void *p, size_t n)
{
	if(b->failed) return;
	if(b->len + n > b->cap){
		size_t cap = b->cap ? b->cap : 256;
		while(cap < b->len + n) cap *= 2;
		unsigned char *d = mosquitto_realloc(b->data, cap);
		if(!d){
			b->failed = true;
			return;
		}
		b->data = d;
		b->cap = cap;
	}
	memcpy(b->data + b->len, p, n);
	b->len += n;
}

static void buf_u8(struct buf *b, uint8_t v) { buf_put(b, &v, 1); }

static void buf_u16(struct buf *b, uint16_t v)
{
	unsigned char x[2] = {(unsigned char)(v >> 8), (unsigned char)v};
	buf_put(b, x, 2);
}

static void buf_u32(struct buf *b, uint32_t v)
{
	unsigned char x[4];
	for(int i = 0; i < 4; i++) x[i] = (unsigned char)(v >> (24 - 8 * i));
	buf_put(b, x, 4);
}

static void buf_u64(struct buf *b, uint64_t v)
{
	unsigned char x[8];
	for(int i = 0; i < 8; i++) x[i] = (unsigned char)(v >> (56 - 8 * i));
	buf_put(b, x, 8);
}

static void buf_str(struct buf *b, const char *s)
{
	size_t n = strlen(s);
	buf_u16(b, (uint16_t)n);
	buf_put(b, s, n);
}

static uint64_t fnv(const void *p, size_t n, uint64_t h)
{
	const unsigned char *c = p;
	for(size_t i = 0; i < n; i++){
		h ^= c[i];
		h *= 1099511628211ull;
	}
	return h;
}

#define FNV_START 14695981039346656037ull

/* A string-keyed hash map with chaining; values are owned by the caller. */
struct entry {
	char *key;
	void *value;
	struct entry *next;
};

struct map {
	struct entry **buckets;
	size_t nbuckets, len;
};

static struct entry **map_slot(struct map *m, const char *key)
{
	if(m->nbuckets == 0) return NULL;
	size_t i = fnv(key, strlen(key), FNV_START) & (m->nbuckets - 1);
	struct entry **e = &m->buckets[i];
	while(*e && strcmp((*e)->key, key) != 0) e = &(*e)->next;
	return e;
}

static void *map_get(struct map *m, const char *key)
{
	struct entry **e = map_slot(m, key);
	return (e && *e) ? (*e)->value : NULL;
}

static bool map_grow(struct map *m)
{
	size_t n = m->nbuckets ? m->nbuckets * 2 : 64;
	struct entry **b = mosquitto_calloc(n, sizeof(*b));
	if(!b) return false;
	for(size_t i = 0; i < m->nbuckets; i++){
		struct entry *e = m->buckets[i];
		while(e){
			struct entry *next = e->next;
			size_t j = fnv(e->key, strlen(e->key), FNV_START) & (n - 1);
			e->next = b[j];
			b[j] = e;
			e = next;
		}
	}
	mosquitto_free(m->buckets);
	m->buckets = b;
	m->nbuckets = n;
	return true;
}

/* Insert `key` (copied) with `value`; false if out of memory. */
static bool map_put(struct map *m, const char *key, void *value)
{
	if(m->len + 1 > m->nbuckets && !map_grow(m)) return false;
	struct entry **slot = map_slot(m, key);
	if(*slot){
		(*slot)->value = value;
		return true;
	}
	struct entry *e = mosquitto_calloc(1, sizeof(*e));
	if(!e) return false;
	e->key = mosquitto_strdup(key);
	if(!e->key){
		mosquitto_free(e);
		return false;
	}
	e->value = value;
	*slot = e;
	m->len++;
	return true;
}

/* Remove `key`; returns its value. */
static void *map_take(struct map *m, const char *key)
{
	struct entry **slot = map_slot(m, key);
	if(!slot || !*slot) return NULL;
	struct entry *e = *slot;
	void *v = e->value;
	*slot = e->next;
	mosquitto_free(e->key);
	mosquitto_free(e);
	m->len--;
	return v;
}

static void map_free(struct map *m, void (*free_value)(void *))
{
	for(size_t i = 0; i < m->nbuckets; i++){
		struct entry *e = m->buckets[i];
		while(e){
			struct entry *next = e->next;
			if(free_value) free_value(e->value);
			mosquitto_free(e->key);
			mosquitto_free(e);
			e = next;
		}
	}
	mosquitto_free(m->buckets);
	memset(m, 0, sizeof(*m));
}

/* ---- the table ---- */

/* One filter across all clients. */
struct filter {
	uint32_t holders;   /* clients holding it */
	bool announced;     /* present in what the agent was last told */
	bool dirty;         /* in the pending list */
};

/* One client session. `filters` maps filter -> (void *)1. */
struct client {
	struct map filters;
	bool online;
	bool persistent;
};

static struct {
	mosquitto_plugin_id_t *id;
	struct map clients;      /* id -> struct client */
	struct map filters;      /* filter -> struct filter */
	struct map agents;       /* ids of mqlink agents -> (void *)1 */
	char **pending;          /* filters whose presence may have changed */
	size_t npending, cappending;
	uint64_t epoch, seq;
	int acl_result;
	char *state_file;
	bool state_dirty;
	time_t state_written;
	size_t max_per_client;
	uint64_t refused;
} g;

static void free_client(void *p)
{
	struct client *c = p;
	map_free(&c->filters, NULL);
	mosquitto_free(c);
}

static void mark_pending(const char *filter, struct filter *f)
{
	if(f->dirty) return;
	if(g.npending == g.cappending){
		size_t cap = g.cappending ? g.cappending * 2 : 64;
		char **p = mosquitto_realloc(g.pending, cap * sizeof(*p));
		if(!p) return;
		g.pending = p;
		g.cappending = cap;
	}
	char *copy = mosquitto_strdup(filter);
	if(!copy) return;
	g.pending[g.npending++] = copy;
	f->dirty = true;
}

static void hold(const char *filter)
{
	struct filter *f = map_get(&g.filters, filter);
	if(!f){
		f = mosquitto_calloc(1, sizeof(*f));
		if(!f || !map_put(&g.filters, filter, f)){
			mosquitto_free(f);
			return;
		}
	}
	f->holders++;
	mark_pending(filter, f);
}

static void release(const char *filter)
{
	struct filter *f = map_get(&g.filters, filter);
	if(!f || f->holders == 0) return;
	f->holders--;
	mark_pending(filter, f);
}

/* The filter a subscription counts as (`$share/<group>/<f>` -> f), or NULL
 * for the agents' own shared subscriptions, broker-local topics (`$SYS/`,
 * `$mqlink/`) and malformed ones. */
static const char *filter_of(const char *sub)
{
	/* Broker-local topics are never a region's interest. */
	if(strncmp(sub, "$SYS/", 5) == 0 || strncmp(sub, "$mqlink/", 8) == 0) return NULL;
	if(strncmp(sub, "$share/", 7) != 0) return sub;
	if(strncmp(sub, AGENT_SHARE, strlen(AGENT_SHARE)) == 0) return NULL;
	const char *rest = strchr(sub + 7, '/');
	return (rest && rest[1]) ? rest + 1 : NULL;
}

static struct client *client_get(const char *id, bool create)
{
	struct client *c = map_get(&g.clients, id);
	if(c || !create) return c;
	c = mosquitto_calloc(1, sizeof(*c));
	if(!c || !map_put(&g.clients, id, c)){
		mosquitto_free(c);
		return NULL;
	}
	return c;
}

static void forget_client(const char *id)
{
	struct client *c = map_take(&g.clients, id);
	if(!c) return;
	for(size_t i = 0; i < c->filters.nbuckets; i++){
		for(struct entry *e = c->filters.buckets[i]; e; e = e->next) release(e->key);
	}
	if(c->persistent) g.state_dirty = true;
	free_client(c);
}

static void subscribe(const struct mosquitto *client, const char *sub)
{
	const char *id = mosquitto_client_id(client);
	const char *filter = filter_of(sub);
	if(!id || !filter || strlen(filter) > MAX_STRING || map_get(&g.agents, id)) return;
	bool persistent = !mosquitto_client_clean_session(client);
	struct client *c = map_get(&g.clients, id);
	if(c && !c->online && !persistent){
		/* Back with a clean start: the broker dropped its old session. */
		forget_client(id);
		c = NULL;
	}
	c = c ? c : client_get(id, true);
	if(!c) return;
	c->online = true;
	c->persistent = persistent;
	if(map_get(&c->filters, filter)) return;
	if(c->filters.len >= g.max_per_client){
		if(g.refused++ % 1000 == 0){
			mosquitto_log_printf(MOSQ_LOG_WARNING,
					"mqlink_interest: client %s holds %zu filters, the most kept per client; "
					"more are not advertised (%llu so far)",
					id, c->filters.len, (unsigned long long)g.refused);
		}
		return;
	}
	if(!map_put(&c->filters, filter, (void *)1)) return;
	hold(filter);
	if(persistent) g.state_dirty = true;
}

static void unsubscribe(const struct mosquitto *client, const char *sub)
{
	const char *id = mosquitto_client_id(client);
	const char *filter = filter_of(sub);
	if(!id || !filter) return;
	struct client *c = map_get(&g.clients, id);
	if(!c || !map_take(&c->filters, filter)) return;
	release(filter);
	if(c->persistent) g.state_dirty = true;
}

/* ---- messages to the agent ---- */

static void header(struct buf *b, uint8_t kind, uint64_t seq)
{
	buf_put(b, "MQI1", 4);
	buf_u8(b, kind);
	buf_u64(b, g.epoch);
	buf_u64(b, seq);
}

static void send_buf(struct buf *b)
{
	if(!b->failed){
		mosquitto_broker_publish_copy(NULL, TOPIC, (int)b->len, b->data, 1, false, NULL);
	}
	mosquitto_free(b->data);
	memset(b, 0, sizeof(*b));
}

/* Tell the agent what changed since the last delta (one message). */
static void flush_pending(void)
{
	if(g.npending == 0) return;
	struct buf adds = {0}, removes = {0};
	uint32_t nadd = 0, nremove = 0;
	for(size_t i = 0; i < g.npending; i++){
		char *name = g.pending[i];
		struct filter *f = map_get(&g.filters, name);
		if(f){
			f->dirty = false;
			bool now = f->holders > 0;
			if(now && !f->announced){
				buf_str(&adds, name);
				nadd++;
			}else if(!now && f->announced){
				buf_str(&removes, name);
				nremove++;
			}
			f->announced = now;
			if(!now) mosquitto_free(map_take(&g.filters, name));
		}
		mosquitto_free(name);
	}
	g.npending = 0;
	if(nadd + nremove > 0){
		struct buf b = {0};
		header(&b, 2, ++g.seq);
		buf_u32(&b, nadd);
		buf_u32(&b, nremove);
		buf_put(&b, adds.data, adds.len);
		buf_put(&b, removes.data, removes.len);
		b.failed |= adds.failed || removes.failed;
		send_buf(&b);
	}
	mosquitto_free(adds.data);
	mosquitto_free(removes.data);
}

/* One snapshot part: `n` strings already in `body` (which is emptied). */
static void send_part(struct buf *body, uint32_t n, bool last)
{
	struct buf b = {0};
	header(&b, 1, g.seq);
	buf_u8(&b, last ? 1 : 0);
	buf_u32(&b, n);
	buf_put(&b, body->data, body->len);
	b.failed |= body->failed;
	send_buf(&b);
	body->len = 0;
}

/* The whole table at the current seq, in parts. */
static void send_snapshot(void)
{
	flush_pending();
	struct buf body = {0};
	uint32_t n = 0;
	for(size_t i = 0; i < g.filters.nbuckets; i++){
		for(struct entry *e = g.filters.buckets[i]; e; e = e->next){
			if(!((struct filter *)e->value)->announced) continue;
			if(body.len + 2 + strlen(e->key) > CHUNK_BYTES && n > 0){
				send_part(&body, n, false);
				n = 0;
			}
			buf_str(&body, e->key);
			n++;
		}
	}
	send_part(&body, n, true);
	mosquitto_free(body.data);
}

/* ---- the state file ---- */

static void save_state(void)
{
	if(!g.state_file) return;
	struct buf b = {0};
	buf_put(&b, "MQIS1", 5);
	buf_u32(&b, (uint32_t)g.agents.len);
	for(size_t i = 0; i < g.agents.nbuckets; i++){
		for(struct entry *e = g.agents.buckets[i]; e; e = e->next) buf_str(&b, e->key);
	}
	uint32_t n = 0;
	for(size_t i = 0; i < g.clients.nbuckets; i++){
		for(struct entry *e = g.clients.buckets[i]; e; e = e->next){
			if(((struct client *)e->value)->persistent) n++;
		}
	}
	buf_u32(&b, n);
	for(size_t i = 0; i < g.clients.nbuckets; i++){
		for(struct entry *e = g.clients.buckets[i]; e; e = e->next){
			struct client *c = e->value;
			if(!c->persistent) continue;
			buf_str(&b, e->key);
			buf_u32(&b, (uint32_t)c->filters.len);
			for(size_t j = 0; j < c->filters.nbuckets; j++){
				for(struct entry *f = c->filters.buckets[j]; f; f = f->next) buf_str(&b, f->key);
			}
		}
	}
	buf_u64(&b, fnv(b.data, b.len, FNV_START));
	size_t plen = strlen(g.state_file) + 5;
	char *tmp = mosquitto_malloc(plen);
	if(!b.failed && tmp){
		snprintf(tmp, plen, "%s.tmp", g.state_file);
		FILE *f = fopen(tmp, "wb");
		bool ok = f && fwrite(b.data, 1, b.len, f) == b.len;
		if(f && fclose(f) != 0) ok = false;
		if(ok && rename(tmp, g.state_file) == 0){
			g.state_dirty = false;
		}else{
			mosquitto_log_printf(MOSQ_LOG_WARNING, "mqlink_interest: cannot write %s", g.state_file);
			unlink(tmp);
		}
	}
	mosquitto_free(tmp);
	mosquitto_free(b.data);
}

struct reader {
	const unsigned char *p;
	size_t left;
	bool bad;
};

static uint32_t rd_u32(struct reader *r)
{
	if(r->left < 4){
		r->bad = true;
		return 0;
	}
	uint32_t v = ((uint32_t)r->p[0] << 24) | ((uint32_t)r->p[1] << 16) | ((uint32_t)r->p[2] << 8) | r->p[3];
	r->p += 4;
	r->left -= 4;
	return v;
}

/* A string copied into `out` (NUL-terminated); false when malformed. */
static bool rd_str(struct reader *r, char *out)
{
	if(r->left < 2){
		r->bad = true;
		return false;
	}
	size_t n = ((size_t)r->p[0] << 8) | r->p[1];
	if(r->left - 2 < n || memchr(r->p + 2, 0, n)){
		r->bad = true;
		return false;
	}
	memcpy(out, r->p + 2, n);
	out[n] = 0;
	r->p += 2 + n;
	r->left -= 2 + n;
	return true;
}

static void load_state(void)
{
	if(!g.state_file) return;
	FILE *f = fopen(g.state_file, "rb");
	if(!f) return;
	struct buf b = {0};
	unsigned char chunk[4096];
	size_t n;
	while((n = fread(chunk, 1, sizeof(chunk), f)) > 0) buf_put(&b, chunk, n);
	fclose(f);
	char *s = mosquitto_malloc(MAX_STRING + 1);
	char *id = mosquitto_malloc(MAX_STRING + 1);
	bool ok = !b.failed && s && id && b.len >= 13 && memcmp(b.data, "MQIS1", 5) == 0;
	if(ok){
		uint64_t sum = 0;
		for(int i = 0; i < 8; i++) sum = (sum << 8) | b.data[b.len - 8 + (size_t)i];
		ok = sum == fnv(b.data, b.len - 8, FNV_START);
	}
	struct reader r = {ok ? b.data + 5 : NULL, ok ? b.len - 13 : 0, !ok};
	uint32_t agents = rd_u32(&r);
	for(uint32_t i = 0; i < agents && !r.bad; i++){
		if(rd_str(&r, s)) map_put(&g.agents, s, (void *)1);
	}
	uint32_t clients = rd_u32(&r);
	for(uint32_t i = 0; i < clients && !r.bad; i++){
		if(!rd_str(&r, id)) break;
		uint32_t nf = rd_u32(&r);
		struct client *c = client_get(id, true);
		if(!c) break;
		c->persistent = true;
		c->online = false;
		for(uint32_t j = 0; j < nf && !r.bad; j++){
			if(rd_str(&r, s) && !map_get(&c->filters, s) && map_put(&c->filters, s, (void *)1)) hold(s);
		}
	}
	if(r.bad){
		mosquitto_log_printf(MOSQ_LOG_WARNING,
				"mqlink_interest: %s is damaged; restored what came before the damage", g.state_file);
	}else{
		mosquitto_log_printf(MOSQ_LOG_INFO, "mqlink_interest: restored %u persistent sessions from %s",
				clients, g.state_file);
	}
	/* The restored filters are the starting table: announced at seq 0. */
	for(size_t i = 0; i < g.npending; i++){
		struct filter *fl = map_get(&g.filters, g.pending[i]);
		if(fl){
			fl->dirty = false;
			fl->announced = fl->holders > 0;
		}
		mosquitto_free(g.pending[i]);
	}
	g.npending = 0;
	mosquitto_free(s);
	mosquitto_free(id);
	mosquitto_free(b.data);
}

/* ---- access control answer ---- */

/* Whether one configuration file (or directory of them) sets up access
 * control other than this plugin. */
static bool other_access_control(const char *path, int depth)
{
	if(depth > 4) return false;
	FILE *f = fopen(path, "r");
	if(!f) return false;
	char line[4096];
	bool found = false;
	while(!found && fgets(line, sizeof(line), f)){
		char *p = line;
		while(isspace((unsigned char)*p)) p++;
		if(strncmp(p, "acl_file", 8) == 0 && isspace((unsigned char)p[8])){
			found = true;
		}else if((strncmp(p, "plugin", 6) == 0 && isspace((unsigned char)p[6]))
				|| (strncmp(p, "auth_plugin", 11) == 0 && isspace((unsigned char)p[11]))){
			found = strstr(p, "mqlink_interest") == NULL;
		}else if(strncmp(p, "include_dir", 11) == 0 && isspace((unsigned char)p[11])){
			char *dir = p + 11;
			while(isspace((unsigned char)*dir)) dir++;
			dir[strcspn(dir, "\r\n")] = 0;
			DIR *d = opendir(dir);
			struct dirent *de;
			while(d && !found && (de = readdir(d))){
				size_t n = strlen(de->d_name);
				if(n > 5 && strcmp(de->d_name + n - 5, ".conf") == 0){
					char sub[4096];
					snprintf(sub, sizeof(sub), "%s/%s", dir, de->d_name);
					found = other_access_control(sub, depth + 1);
				}
			}
			if(d) closedir(d);
		}
	}
	fclose(f);
	return found;
}

/* The broker's configuration file, from its command line (`-c path`). */
static bool config_path(char *out, size_t len)
{
	FILE *f = fopen("/proc/self/cmdline", "rb");
	if(!f) return false;
	char cmd[8192];
	size_t n = fread(cmd, 1, sizeof(cmd) - 1, f);
	fclose(f);
	cmd[n] = 0;
	for(size_t i = 0; i < n; i += strlen(cmd + i) + 1){
		size_t next = i + strlen(cmd + i) + 1;
		if((strcmp(cmd + i, "-c") == 0 || strcmp(cmd + i, "--config-file") == 0) && next < n){
			snprintf(out, len, "%s", cmd + next);
			return true;
		}
	}
	return false;
}

static int decide_acl(const char *mode)
{
	if(mode && strcmp(mode, "allow") == 0) return MOSQ_ERR_SUCCESS;
	if(mode && strcmp(mode, "defer") == 0) return MOSQ_ERR_PLUGIN_DEFER;
	char path[4096];
	bool other = config_path(path, sizeof(path)) && other_access_control(path, 0);
	mosquitto_log_printf(MOSQ_LOG_INFO,
			"mqlink_interest: %s access control in the configuration: access checks %s",
			other ? "found other" : "no other", other ? "deferred to it" : "allowed");
	return other ? MOSQ_ERR_PLUGIN_DEFER : MOSQ_ERR_SUCCESS;
}

/* ---- events ---- */

static int on_acl(int event, void *data, void *userdata)
{
	(void)event;
	(void)userdata;
	struct mosquitto_evt_acl_check *e = data;
	if(!e->client || !e->topic){
		return g.acl_result;
	}
	if(e->access == MOSQ_ACL_SUBSCRIBE){
		subscribe(e->client, e->topic);
	}else if(e->access == MOSQ_ACL_UNSUBSCRIBE){
		unsubscribe(e->client, e->topic);
	}
	return g.acl_result;
}

static int on_disconnect(int event, void *data, void *userdata)
{
	(void)event;
	(void)userdata;
	struct mosquitto_evt_disconnect *e = data;
	const char *id = mosquitto_client_id(e->client);
	struct client *c = id ? map_get(&g.clients, id) : NULL;
	if(!c) return MOSQ_ERR_SUCCESS;
	if(!mosquitto_client_clean_session(e->client)){
		c->online = false;
	}else if(mosquitto_client_sub_count(e->client) == 0 && c->filters.len > 0){
		/* A session taken over by a new connection with the same id: the
		 * broker marks the old one clean and moves its subscriptions to
		 * the new one before it tells us (a clean-start takeover drops
		 * them; their filters then stay advertised, a false positive,
		 * until that client ends cleanly). The record stays with the
		 * new connection. */
		c->online = true;
	}else{
		forget_client(id);
	}
	return MOSQ_ERR_SUCCESS;
}

static int on_message(int event, void *data, void *userdata)
{
	(void)event;
	(void)userdata;
	struct mosquitto_evt_message *e = data;
	if(!e->client || !e->topic || strncmp(e->topic, TOPIC, strlen(TOPIC)) != 0) return MOSQ_ERR_SUCCESS;
	const char *id = mosquitto_client_id(e->client);
	if(strcmp(e->topic, SYNC_TOPIC) == 0 && id){
		if(!map_get(&g.agents, id)){
			forget_client(id);
			map_put(&g.agents, id, (void *)1);
			g.state_dirty = true;
		}
		send_snapshot();
	}else if(strcmp(e->topic, EXPIRED_TOPIC) == 0 && e->payloadlen > 0 && e->payloadlen <= MAX_STRING){
		char *gone = mosquitto_malloc(e->payloadlen + 1);
		if(gone){
			memcpy(gone, e->payload, e->payloadlen);
			gone[e->payloadlen] = 0;
			struct client *c = map_get(&g.clients, gone);
			if(c && !c->online) forget_client(gone);
			mosquitto_free(gone);
		}
	}
	return MOSQ_ERR_SUCCESS;
}

static int on_tick(int event, void *data, void *userdata)
{
	(void)event;
	(void)data;
	(void)userdata;
	flush_pending();
	time_t now = time(NULL);
	if(g.state_dirty && now != g.state_written){
		g.state_written = now;
		save_state();
	}
	return MOSQ_ERR_SUCCESS;
}

int mosquitto_plugin_version(int supported_version_count, const int *supported_versions)
{
	for(int i = 0; i < supported_version_count; i++){
		if(supported_versions[i] == 5) return 5;
	}
	return -1;
}

int mosquitto_plugin_init(mosquitto_plugin_id_t *identifier, void **userdata,
		struct mosquitto_opt *options, int option_count)
{
	(void)userdata;
	memset(&g, 0, sizeof(g));
	g.id = identifier;
	g.max_per_client = 10000;
	const char *acl = NULL;
	for(int i = 0; i < option_count; i++){
		if(strcmp(options[i].key, "state_file") == 0){
			/* The last one given wins (a site file may override ours). */
			mosquitto_free(g.state_file);
			g.state_file = mosquitto_strdup(options[i].value);
		}else if(strcmp(options[i].key, "acl") == 0){
			acl = options[i].value;
		}else if(strcmp(options[i].key, "max_filters_per_client") == 0){
			long v = strtol(options[i].value, NULL, 10);
			if(v > 0) g.max_per_client = (size_t)v;
		}
	}
	if(acl && strcmp(acl, "allow") != 0 && strcmp(acl, "defer") != 0 && strcmp(acl, "auto") != 0){
		mosquitto_log_printf(MOSQ_LOG_ERR, "mqlink_interest: plugin_opt_acl %s: expected allow, defer or auto", acl);
		mosquitto_free(g.state_file);
		return MOSQ_ERR_INVAL;
	}
	g.acl_result = decide_acl(acl);
	struct timespec ts;
	clock_gettime(CLOCK_REALTIME, &ts);
	g.epoch = ((uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec) ^ ((uint64_t)getpid() << 48);
	load_state();
	int rc = mosquitto_callback_register(g.id, MOSQ_EVT_ACL_CHECK, on_acl, NULL, NULL);
	if(!rc) rc = mosquitto_callback_register(g.id, MOSQ_EVT_DISCONNECT, on_disconnect, NULL, NULL);
	if(!rc) rc = mosquitto_callback_register(g.id, MOSQ_EVT_MESSAGE, on_message, NULL, NULL);
	if(!rc) rc = mosquitto_callback_register(g.id, MOSQ_EVT_TICK, on_tick, NULL, NULL);
	return rc;
}

int mosquitto_plugin_cleanup(void *userdata, struct mosquitto_opt *options, int option_count)
{
	(void)userdata;
	(void)options;
	(void)option_count;
	if(g.state_dirty) save_state();
	mosquitto_callback_unregister(g.id, MOSQ_EVT_ACL_CHECK, on_acl, NULL);
	mosquitto_callback_unregister(g.id, MOSQ_EVT_DISCONNECT, on_disconnect, NULL);
	mosquitto_callback_unregister(g.id, MOSQ_EVT_MESSAGE, on_message, NULL);
	mosquitto_callback_unregister(g.id, MOSQ_EVT_TICK, on_tick, NULL);
	for(size_t i = 0; i < g.npending; i++) mosquitto_free(g.pending[i]);
	mosquitto_free(g.pending);
	map_free(&g.clients, free_client);
	map_free(&g.filters, mosquitto_free);
	map_free(&g.agents, NULL);
	mosquitto_free(g.state_file);
	memset(&g, 0, sizeof(g));
	return MOSQ_ERR_SUCCESS;
}
