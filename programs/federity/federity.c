/* federity: fednode's on-chain program. Repositories, members, anchored commits and branch heads.
 *
 * Layouts and error numbers are mirrored in protocol/chain.py and documented in
 * programs/README.md; change all three together.
 *
 * Authenticity of accounts we read: an account owned by this program whose data carries our tag
 * was written by this program, and the program only ever writes a record at the PDA derived
 * from that record's own identifying fields (with the canonical bump). So a record read from
 * any account passes as "the record of (repo, key)" when its owner, tag and fields match; no
 * PDA derivation is needed except when creating an account.
 *
 * NFT-bound repositories (issue 14): once bind_nft has set repo.mint, "owner" means "holder of
 * the repository's Token-2022 NFT": the signer must own a Token-2022 account of that mint with
 * amount 1, not frozen (see holds()). The program is the metadata's update authority (the repo
 * PDA) and rewrites the metadata "head" field whenever the tracked branch's head moves.
 */
#include "../sdk/federity_sdk.h"
#include "../sdk/zk_update_proof.h"

#define MAX_ACCOUNTS 32
#define MAX_BRANCHES 8
#define MAX_PARENTS 16
#define LAYOUT_VERSION 1
#define FLAG_HAS_COMMITMENT 1
#define FLAG_HAS_REMAINDER 2 /* merge only, and only with FLAG_HAS_COMMITMENT */
#define FLAG_PROVEN 4        /* commit record: prove_commit verified its update proof */
#define REPO_REQUIRES_PROOFS 1 /* repo flags: a sealed verifying key; updates must be proven */
#define REPO_HAS_REMAINDER_KEY 2 /* repo flags: a sealed remainder key; prove_merge may prove merges */
#define VK_SEALED 1          /* zkvk flags: the key is final */
#define VK_CAPACITY 1248     /* key bytes a zkvk record holds: ZK_VK_FIXED + a seed of up to 128 */
#define FLAG_SHARE_LOCKED 1
#define MAX_CONTRIBUTORS 16
#define MAX_SHARE_BPS 10000
#define MAX_URI 200
#define TOKEN_ACCOUNT_SIZE 165 /* base token account; also the account-type byte's offset */
#define EXT_METADATA_POINTER 18
#define EXT_TOKEN_METADATA 19

enum {
  IX_CREATE_REPO, IX_ADD_MEMBER, IX_REMOVE_MEMBER, IX_ANCHOR_COMMIT, IX_MERGE, IX_SET_HEAD,
  IX_BIND_NFT, IX_SYNC_HOLDER, IX_SET_SHARE, IX_SELL, IX_SET_URI, IX_CLAIM, IX_WRITE_VK, IX_SEAL_VK,
  IX_PROVE_COMMIT, IX_WRITE_RVK, IX_SEAL_RVK, IX_PROVE_MERGE
};
enum { TAG_REPO = 1, TAG_MEMBER = 2, TAG_COMMIT = 3, TAG_NFT = 4, TAG_ZKVK = 5, TAG_ZKRVK = 6 };
enum { KIND_INIT, KIND_UPDATE, KIND_MERGE, KIND_REVERT };

enum {
  E_INVALID_INSTRUCTION = 1,
  E_INVALID_INSTRUCTION_DATA,
  E_NOT_ENOUGH_ACCOUNTS,
  E_MISSING_REQUIRED_SIGNATURE,
  E_ACCOUNT_NOT_WRITABLE,
  E_INVALID_PDA,
  E_INVALID_SYSTEM_PROGRAM,
  E_INVALID_INSTRUCTIONS_SYSVAR,
  E_REPO_ALREADY_EXISTS,
  E_INVALID_REPO_ACCOUNT,
  E_NOT_OWNER,
  E_MEMBER_ALREADY_EXISTS,
  E_NOT_A_MEMBER,
  E_INVALID_KIND,
  E_TOO_MANY_PARENTS,
  E_DUPLICATE_PARENT,
  E_PARENT_NOT_ANCHORED,
  E_COMMIT_ALREADY_ANCHORED,
  E_MISSING_SIGNATURE_PROOF,
  E_SIGNATURE_PROOF_MISMATCH,
  E_INVALID_COMMITMENT,
  E_NOT_FAST_FORWARD,
  E_UNKNOWN_BRANCH,
  E_BRANCH_TABLE_FULL,
  E_INPUT_NOT_ANCHORED,
  E_MISSING_INPUT_COMMITMENT,
  E_MERGE_COMMITMENT_MISMATCH,
  E_HEAD_NOT_IN_REPO,
  E_RENT_UNAVAILABLE,
  E_INVALID_BRANCH,
  E_TOO_MANY_ACCOUNTS,
  E_COMMIT_HASH_MISMATCH,
  E_NFT_ALREADY_BOUND,
  E_INVALID_MINT,
  E_NOT_HOLDER,
  E_INVALID_NFT_ACCOUNT,
  E_MISSING_NFT_ACCOUNTS,
  E_INVALID_TOKEN_PROGRAM,
  E_SHARE_LOCKED,
  E_INVALID_SHARE,
  E_CONTRIBUTOR_TABLE_FULL,
  E_CONTRIBUTOR_MISMATCH,
  E_STALE_OFFER,
  E_INVALID_BUYER_ACCOUNT,
  E_ARITHMETIC_OVERFLOW,
  E_NOTHING_OWED,
  E_CONTRIBUTOR_UNFUNDED,
  E_INVALID_VK_ACCOUNT,
  E_VK_SEALED,
  E_VK_MISMATCH,
  E_INVALID_VK,
  E_NO_VERIFYING_KEY,
  E_COMMIT_NOT_ANCHORED,
  E_NOT_AUTHOR,
  E_MISSING_COMMITMENT,
  E_INVALID_PROOF_POINT,
  E_PROOF_LINK_FAILS,
  E_PROOF_GROTH16_FAILS,
  E_INPUT_NOT_PROVEN,
  E_NO_REMAINDER_KEY,
  E_NOT_A_MERGE,
  E_MERGE_WEIGHT_TOO_LARGE,
};

typedef struct {
  uint8_t name[32]; /* sha256(branch name); all zero = free slot */
  uint8_t head[32];
} Branch;

typedef struct {
  uint8_t tag, version, bump, flags, _pad[4]; /* flags: REPO_REQUIRES_PROOFS (set by seal_vk) */
  uint8_t repo_id[32];
  uint8_t owner[32];
  uint8_t mint[32];
  uint64_t commit_count;
  uint8_t acc[32]; /* acc' = sha256(acc || commit_hash), from 32 zero bytes */
  Branch branches[MAX_BRANCHES];
} Repo;

typedef struct {
  uint8_t tag, version, bump, _pad[5];
  uint8_t repo_id[32];
  uint8_t member[32];
  uint64_t added_slot;
} Member;

typedef struct {
  uint8_t tag, version, bump, kind, flags, n_parents, _pad[2];
  uint8_t repo_id[32];
  uint8_t commit_hash[32];
  uint8_t author[32];
  uint8_t parents_digest[32];
  uint8_t commitment[64];
  uint64_t slot;
  uint64_t index;
} Commit;

typedef struct {
  uint8_t key[32];
  uint64_t weight; /* sum of the weights of this author's inputs in anchored merges */
  uint64_t owed;   /* sale parts that could not be pushed, held in the nft PDA until claim */
} Contributor;

typedef struct {
  uint8_t tag, version, bump, flags, _pad[4]; /* flags bit 0: share locked */
  uint8_t repo_id[32];
  uint8_t mint[32];
  uint8_t holder[32];      /* as last recorded: bind, holder actions, sale, sync_holder */
  uint8_t head_branch[32]; /* the branch whose head the metadata "head" field follows */
  uint64_t sale_seq;       /* +1 on every recorded holder change */
  uint16_t share_bps, n_contributors;
  uint8_t _pad2[4];
  Contributor contributors[MAX_CONTRIBUTORS];
} Nft;

/* The repository's verifying key for update proofs (PDA "zkvk", repo_id, tag TAG_ZKVK) or for merge
 * remainder proofs (PDA "zkrvk", repo_id, tag TAG_ZKRVK; bound2 stays zero: X is the merge's W):
 * written in chunks by the owner (write_vk / write_rvk), then sealed (seal_vk / seal_rvk), immutable
 * from then on. */
typedef struct {
  uint8_t tag, version, bump, flags, _pad[4]; /* flags: VK_SEALED */
  uint8_t repo_id[32];
  uint8_t key_id[32]; /* sha256(vk[0..vk_len]), set at seal */
  uint8_t bound2[32]; /* B^2, big-endian, set at seal */
  uint16_t vk_len;    /* set at seal */
  uint8_t _pad2[6];
  uint8_t vk[VK_CAPACITY];
} ZkVk;

_Static_assert(sizeof(Repo) == 656, "Repo layout");
_Static_assert(sizeof(ZkVk) == 1360, "ZkVk layout");
_Static_assert(sizeof(Nft) == 920, "Nft layout");
_Static_assert(sizeof(Member) == 80, "Member layout");
_Static_assert(sizeof(Commit) == 216, "Commit layout");

static const SolPubkey INSTRUCTIONS_SYSVAR_ID = {{
    0x06, 0xa7, 0xd5, 0x17, 0x18, 0x7b, 0xd1, 0x66, 0x35, 0xda, 0xd4, 0x04, 0x55, 0xfd, 0xc2, 0xc0,
    0xc1, 0x24, 0xc6, 0x8f, 0x21, 0x56, 0x75, 0xa5, 0xdb, 0xba, 0xcb, 0x5f, 0x08, 0x00, 0x00, 0x00}};
static const SolPubkey ED25519_PROGRAM_ID = {{
    0x03, 0x7d, 0x46, 0xd6, 0x7c, 0x93, 0xfb, 0xbe, 0x12, 0xf9, 0x42, 0x8f, 0x83, 0x8d, 0x40, 0xff,
    0x05, 0x70, 0x74, 0x49, 0x27, 0xf4, 0x8a, 0x64, 0xfc, 0xca, 0x70, 0x44, 0x80, 0x00, 0x00, 0x00}};

static const SolPubkey TOKEN_2022_PROGRAM_ID = {{
    0x06, 0xdd, 0xf6, 0xe1, 0xee, 0x75, 0x8f, 0xde, 0x18, 0x42, 0x5d, 0xbc, 0xe4, 0x6c, 0xcd, 0xda,
    0xb6, 0x1a, 0xfc, 0x4d, 0x83, 0xb9, 0x0d, 0x27, 0xfe, 0xbd, 0xf9, 0x28, 0xd8, 0xa1, 0x8b, 0xfc}};
/* sha256("spl_token_metadata_interface:updating_field")[:8] */
static const uint8_t UPDATE_FIELD_DISCRIMINATOR[8] = {221, 233, 49, 45, 181, 202, 220, 200};

/* ---- account checks ------------------------------------------------------------------- */

static uint64_t check_signer(const SolAccountInfo *a, bool writable) {
  if (!a->is_signer) return E_MISSING_REQUIRED_SIGNATURE;
  if (writable && !a->is_writable) return E_ACCOUNT_NOT_WRITABLE;
  return 0;
}

static Repo *as_repo(const SolAccountInfo *a, const SolPubkey *program_id) {
  if (!sol_pubkey_eq(a->owner, program_id) || a->data_len != sizeof(Repo)) return NULL;
  Repo *r = (Repo *)a->data;
  return r->tag == TAG_REPO && r->version == LAYOUT_VERSION ? r : NULL;
}

static const Member *as_member(const SolAccountInfo *a, const SolPubkey *program_id,
                               const uint8_t *repo_id, const uint8_t *member) {
  if (!sol_pubkey_eq(a->owner, program_id) || a->data_len != sizeof(Member)) return NULL;
  const Member *m = (const Member *)a->data;
  if (m->tag != TAG_MEMBER || !sol_bytes_eq(m->repo_id, repo_id, 32) ||
      !sol_bytes_eq(m->member, member, 32))
    return NULL;
  return m;
}

static const Commit *as_commit(const SolAccountInfo *a, const SolPubkey *program_id,
                               const uint8_t *repo_id, const uint8_t *hash) {
  if (!sol_pubkey_eq(a->owner, program_id) || a->data_len != sizeof(Commit)) return NULL;
  const Commit *c = (const Commit *)a->data;
  if (c->tag != TAG_COMMIT || !sol_bytes_eq(c->repo_id, repo_id, 32) ||
      !sol_bytes_eq(c->commit_hash, hash, 32))
    return NULL;
  return c;
}

static bool is_system_program(const SolAccountInfo *a) {
  return sol_pubkey_eq(a->key, &SOL_SYSTEM_PROGRAM_ID);
}

/* ---- PDA creation --------------------------------------------------------------------- */

typedef struct {
  SolBytes seeds[4]; /* prefix, repo_id, key, bump (filled here) */
  uint64_t n_seeds;  /* without the bump */
  uint64_t space;
} PdaSpec;

/* Creates ka[target] at the canonical PDA of spec->seeds, paid by ka[0]; writes the bump. */
static uint64_t create_pda(SolParameters *p, uint64_t target, PdaSpec *spec, uint8_t *bump) {
  SolPubkey expected;
  if (sol_try_find_program_address(spec->seeds, spec->n_seeds, p->program_id, &expected, bump))
    return E_INVALID_PDA;
  SolAccountInfo *t = &p->ka[target];
  if (!sol_pubkey_eq(t->key, &expected)) return E_INVALID_PDA;
  if (!t->is_writable) return E_ACCOUNT_NOT_WRITABLE;
  spec->seeds[spec->n_seeds].addr = bump;
  spec->seeds[spec->n_seeds].len = 1;
  SolSignerSeeds signer = {spec->seeds, spec->n_seeds + 1};
  SolAccountInfo infos[2] = {p->ka[0], *t};
  uint64_t rc = sol_create_pda_account(infos, spec->space, p->program_id, &signer);
  if (rc) return rc == 1 ? E_RENT_UNAVAILABLE : rc;
  sol_refresh_len(t);
  return t->data_len == spec->space ? 0 : E_INVALID_PDA;
}

/* ---- Ed25519 precompile proof ----------------------------------------------------------- */

/* Does precompile instruction `index` (data d[0..len)) prove a signature by `signer` over
 * exactly the 32 bytes `msg`? Only offsets into the precompile's own data are accepted, so
 * what we compare is what the precompile verified. */
static bool ed25519_proves(const uint8_t *d, uint64_t len, uint64_t index, const uint8_t *signer,
                           const uint8_t *msg) {
  if (len < 2) return false;
  uint64_t count = d[0];
  if (2 + 14 * count > len) return false;
  for (uint64_t s = 0; s < count; s++) {
    const uint8_t *o = d + 2 + 14 * s;
    uint64_t pk_at = sol_read_u16(o + 4), pk_ix = sol_read_u16(o + 6);
    uint64_t msg_at = sol_read_u16(o + 8), msg_len = sol_read_u16(o + 10);
    uint64_t msg_ix = sol_read_u16(o + 12);
    if ((pk_ix != 0xffff && pk_ix != index) || (msg_ix != 0xffff && msg_ix != index)) continue;
    if (msg_len != 32 || pk_at + 32 > len || msg_at + 32 > len) continue;
    if (sol_bytes_eq(d + pk_at, signer, 32) && sol_bytes_eq(d + msg_at, msg, 32)) return true;
  }
  return false;
}

/* Scans the Instructions sysvar for an Ed25519 precompile instruction that proves `signer`'s
 * signature over the 32 bytes `msg` (a recomputed commit hash; the repo id for create_repo).
 * Sysvar layout:
 * u16 n, u16 offsets[n], then per instruction
 * u16 n_accounts, (u8 flags, key[32]) * n_accounts, program_id[32], u16 data_len, data. */
static uint64_t check_signature_proof(const SolAccountInfo *sysvar, const uint8_t *signer,
                                      const uint8_t *msg) {
  if (!sol_pubkey_eq(sysvar->key, &INSTRUCTIONS_SYSVAR_ID)) return E_INVALID_INSTRUCTIONS_SYSVAR;
  const uint8_t *d = sysvar->data;
  uint64_t len = sysvar->data_len;
  if (len < 2) return E_INVALID_INSTRUCTIONS_SYSVAR;
  uint64_t n = sol_read_u16(d);
  if (2 + 2 * n > len) return E_INVALID_INSTRUCTIONS_SYSVAR;
  bool seen = false;
  for (uint64_t i = 0; i < n; i++) {
    uint64_t at = sol_read_u16(d + 2 + 2 * i);
    if (at + 2 > len) return E_INVALID_INSTRUCTIONS_SYSVAR;
    at += 2 + 33 * (uint64_t)sol_read_u16(d + at);
    if (at + 34 > len) return E_INVALID_INSTRUCTIONS_SYSVAR;
    uint64_t data_len = sol_read_u16(d + at + 32);
    if (at + 34 + data_len > len) return E_INVALID_INSTRUCTIONS_SYSVAR;
    if (!sol_bytes_eq(d + at, &ED25519_PROGRAM_ID, 32)) continue;
    seen = true;
    if (ed25519_proves(d + at + 34, data_len, i, signer, msg)) return 0;
  }
  return seen ? E_SIGNATURE_PROOF_MISMATCH : E_MISSING_SIGNATURE_PROOF;
}

/* ---- commit hash ------------------------------------------------------------------------ */

/* The commit hash is never taken on trust: it is recomputed from what the program checks itself
 * (protocol.objects.commit_hash_from):
 *   sha256("fednode/commit/v1" || author[32] || kind u8 || n_parents u8 || parents[n][32]
 *          || body_digest[32])
 * with author = the signer whose Ed25519 signature over the result must be proven. */
typedef struct {
  const uint8_t *author;
  const uint8_t *parents; /* n * 32 bytes, in commit order */
  const uint8_t *body_digest;
  uint64_t kind, n;
} Preimage;

static void commit_hash(const Preimage *c, uint8_t out[32]) {
  static const char domain[] = "fednode/commit/v1";
  const uint8_t *author = c->author, *parents = c->parents, *body_digest = c->body_digest;
  uint64_t n = c->n;
  uint8_t head[2] = {(uint8_t)c->kind, (uint8_t)n};
  /* no parents: the digest moves up into the parents' slice, so no empty slice is hashed */
  SolBytes s[5] = {{(const uint8_t *)domain, sizeof(domain) - 1}, {author, 32}, {head, 2},
                   {body_digest, 32}, {body_digest, 32}};
  if (n) s[3] = (SolBytes){parents, 32 * n};
  sol_sha256(s, n ? 5 : 4, out);
}

/* ---- shared commit bookkeeping ------------------------------------------------------------ */

static int64_t find_branch(const Repo *r, const uint8_t *name) {
  for (int64_t i = 0; i < MAX_BRANCHES; i++)
    if (sol_bytes_eq(r->branches[i].name, name, 32)) return i;
  return -1;
}

static int64_t free_branch(const Repo *r) {
  for (int64_t i = 0; i < MAX_BRANCHES; i++)
    if (sol_is_zero(r->branches[i].name, 32)) return i;
  return -1;
}

static bool has_duplicate(const uint8_t *hashes, uint64_t n) {
  for (uint64_t i = 0; i < n; i++)
    for (uint64_t j = i + 1; j < n; j++)
      if (sol_bytes_eq(hashes + 32 * i, hashes + 32 * j, 32)) return true;
  return false;
}

typedef struct {
  const uint8_t *hash;
  const uint8_t *parents; /* n_parents * 32 bytes */
  const uint8_t *commitment; /* NULL when absent */
  uint64_t n_parents;
  uint8_t kind;
} NewCommit;

/* Creates the commit record at ka[2] (paid by ka[0], the author) and appends it to the repo's
 * accumulator. */
static uint64_t record_commit(SolParameters *p, Repo *r, const NewCommit *c) {
  PdaSpec spec = {{{(const uint8_t *)"commit", 6}, {r->repo_id, 32}, {c->hash, 32}}, 3,
                  sizeof(Commit)};
  uint8_t bump;
  uint64_t rc = create_pda(p, 2, &spec, &bump);
  if (rc) return rc;
  Commit *rec = (Commit *)p->ka[2].data;
  rec->tag = TAG_COMMIT;
  rec->version = LAYOUT_VERSION;
  rec->bump = bump;
  rec->kind = c->kind;
  rec->flags = c->commitment ? FLAG_HAS_COMMITMENT : 0;
  rec->n_parents = (uint8_t)c->n_parents;
  memcpy(rec->repo_id, r->repo_id, 32);
  memcpy(rec->commit_hash, c->hash, 32);
  memcpy(rec->author, p->ka[0].key, 32);
  SolBytes parents = {c->parents, 32 * c->n_parents};
  sol_sha256(&parents, 1, rec->parents_digest);
  if (c->commitment) memcpy(rec->commitment, c->commitment, 64);
  rec->slot = sol_current_slot();
  rec->index = r->commit_count;

  r->commit_count += 1;
  sol_sha256_2(r->acc, 32, c->hash, 32, r->acc);
  return 0;
}

/* Return data of anchor_commit and merge: acc || commit_count. Set last: a CPI (the metadata
 * head update) clears the caller's return data. */
static uint64_t return_accumulator(const Repo *r) {
  uint8_t ret[40];
  memcpy(ret, r->acc, 32);
  sol_write_u64(ret + 32, r->commit_count);
  sol_set_return_data(ret, 40);
  return 0;
}

/* Slot for `branch`, creating it when absent and `may_create`. */
static uint64_t branch_slot(Repo *r, const uint8_t *branch, bool may_create, int64_t *slot) {
  *slot = find_branch(r, branch);
  if (*slot >= 0) return 0;
  if (!may_create) return E_UNKNOWN_BRANCH;
  *slot = free_branch(r);
  if (*slot < 0) return E_BRANCH_TABLE_FULL;
  return 0;
}


/* ---- NFT: Token-2022 accounts, control, the metadata "head" field ------------------------ */

static bool is_token_program(const SolAccountInfo *a) {
  return sol_pubkey_eq(a->key, &TOKEN_2022_PROGRAM_ID);
}

static uint64_t read_u32(const uint8_t *p) {
  return (uint64_t)p[0] | (uint64_t)p[1] << 8 | (uint64_t)p[2] << 16 | (uint64_t)p[3] << 24;
}

static void write_u32(uint8_t *p, uint64_t v) {
  for (int i = 0; i < 4; i++) p[i] = (uint8_t)(v >> (8 * i));
}

static void hex32(const uint8_t *in, uint8_t out[64]) {
  static const char digits[] = "0123456789abcdef";
  for (int i = 0; i < 32; i++) {
    out[2 * i] = (uint8_t)digits[in[i] >> 4];
    out[2 * i + 1] = (uint8_t)digits[in[i] & 15];
  }
}

/* The data of `a` if it is an initialized (not frozen) Token-2022 token account of `mint`, else
 * NULL. Layout: mint[32] @0, owner[32] @32, amount u64 @64, state u8 @108; an extended account
 * has account type 2 @165, and Token-2022 never makes one of the multisig length (355). */
static const uint8_t *token_account(const SolAccountInfo *a, const uint8_t *mint) {
  if (!sol_pubkey_eq(a->owner, &TOKEN_2022_PROGRAM_ID)) return NULL;
  uint64_t len = a->data_len;
  if (len < TOKEN_ACCOUNT_SIZE || len == 355) return NULL;
  if (len > TOKEN_ACCOUNT_SIZE && a->data[TOKEN_ACCOUNT_SIZE] != 2) return NULL;
  if (!sol_bytes_eq(a->data, mint, 32) || a->data[108] != 1) return NULL;
  return a->data;
}

/* Control: does token account `a` hold the one token of `mint` for `owner`? */
static bool holds(const SolAccountInfo *a, const uint8_t *mint, const uint8_t *owner) {
  const uint8_t *t = token_account(a, mint);
  return t && sol_bytes_eq(t + 32, owner, 32) && sol_read_u64(t + 64) == 1;
}

static Nft *as_nft(const SolAccountInfo *a, const SolPubkey *program_id, const Repo *r) {
  if (!sol_pubkey_eq(a->owner, program_id) || a->data_len != sizeof(Nft)) return NULL;
  Nft *n = (Nft *)a->data;
  if (n->tag != TAG_NFT || !sol_bytes_eq(n->repo_id, r->repo_id, 32) ||
      !sol_bytes_eq(n->mint, r->mint, 32))
    return NULL;
  return n;
}

static void record_holder(Nft *n, const uint8_t *holder) {
  if (sol_bytes_eq(n->holder, holder, 32)) return;
  memcpy(n->holder, holder, 32);
  n->sale_seq += 1;
}

/* A holder-gated instruction: its repo (ka[1]) and, for an NFT-bound repo, the nft record from
 * the four trailing accounts at ka[t..t+4): holder token account, nft [w], mint [w], Token-2022. */
typedef struct {
  Repo *repo;
  Nft *nft; /* NULL: repository without an NFT */
  uint64_t t;
} Ctl;

static uint64_t nft_accounts(SolParameters *p, Ctl *c) {
  c->nft = NULL;
  if (sol_is_zero(c->repo->mint, 32)) return 0;
  if (p->ka_num < c->t + 4) return E_MISSING_NFT_ACCOUNTS;
  SolAccountInfo *ka = p->ka + c->t;
  c->nft = as_nft(&ka[1], p->program_id, c->repo);
  if (!c->nft || !sol_bytes_eq(ka[2].key, c->repo->mint, 32)) return E_INVALID_NFT_ACCOUNT;
  if (!ka[1].is_writable || !ka[2].is_writable) return E_ACCOUNT_NOT_WRITABLE;
  if (!is_token_program(&ka[3])) return E_INVALID_TOKEN_PROGRAM;
  return 0;
}

/* Loads the repo at ka[1] and checks that ka[0] signed and controls it: is its owner or, once the
 * repo is NFT-bound, holds the NFT in the trailing holder token account (recorded as holder). */
static uint64_t control(SolParameters *p, bool repo_writable, Ctl *c) {
  uint64_t rc = check_signer(&p->ka[0], false);
  if (rc) return rc;
  c->repo = as_repo(&p->ka[1], p->program_id);
  if (!c->repo) return E_INVALID_REPO_ACCOUNT;
  if (repo_writable && !p->ka[1].is_writable) return E_ACCOUNT_NOT_WRITABLE;
  rc = nft_accounts(p, c);
  if (rc) return rc;
  if (!c->nft) return sol_bytes_eq(p->ka[0].key, c->repo->owner, 32) ? 0 : E_NOT_OWNER;
  if (!holds(&p->ka[c->t], c->repo->mint, p->ka[0].key->x)) return E_NOT_HOLDER;
  record_holder(c->nft, p->ka[0].key->x);
  return 0;
}

/* CPI into Token-2022's token-metadata interface on the mint, signed by the repo PDA (ka[1], the
 * metadata's update authority since minting). */
static uint64_t metadata_cpi(SolParameters *p, const Repo *r, SolAccountInfo *mint,
                             uint8_t *data, uint64_t len) {
  SolAccountInfo *repo = &p->ka[1];
  SolAccountMeta metas[2] = {{mint->key, true, false}, {repo->key, false, true}};
  SolInstruction ix = {(SolPubkey *)&TOKEN_2022_PROGRAM_ID, metas, 2, data, len};
  SolAccountInfo infos[2] = {*mint, *repo};
  uint8_t bump = r->bump;
  SolBytes seeds[3] = {{(const uint8_t *)"repo", 4}, {r->repo_id, 32}, {&bump, 1}};
  SolSignerSeeds signer = {seeds, 3};
  return sol_invoke_signed_c(&ix, infos, 2, &signer, 1);
}

/* A branch of the repo now points at `head`: if it is the branch the NFT tracks, rewrite the
 * metadata field "head" (UpdateField, Field::Key("head"), 64 lowercase hex digits: same size). */
static uint64_t update_head_field(SolParameters *p, const Ctl *c, const uint8_t *branch,
                                  const uint8_t *head) {
  if (!c->nft || !sol_bytes_eq(branch, c->nft->head_branch, 32)) return 0;
  uint8_t data[8 + 1 + 4 + 4 + 4 + 64];
  memcpy(data, UPDATE_FIELD_DISCRIMINATOR, 8);
  data[8] = 3; /* Field::Key */
  write_u32(data + 9, 4);
  memcpy(data + 13, "head", 4);
  write_u32(data + 17, 64);
  hex32(head, data + 21);
  return metadata_cpi(p, c->repo, &p->ka[c->t + 2], data, sizeof(data));
}

/* ---- bind_nft: is this mint a clean NFT of this repository? ------------------------------- */

/* A borsh string (u32 length + bytes) at v[*at..end): its bytes and length, *at moved past it. */
static const uint8_t *take_string(const uint8_t *v, uint64_t end, uint64_t *at, uint64_t *len) {
  if (*at + 4 > end) return NULL;
  *len = read_u32(v + *at);
  if (*len > end - *at - 4) return NULL;
  const uint8_t *s = v + *at + 4;
  *at += 4 + *len;
  return s;
}

/* TokenMetadata: update_authority[32] (must be the repo PDA), mint[32], name, symbol, uri,
 * u32 count + (key, value) pairs; "repo" must be hex(repo_id) and "head" 64 characters (so the
 * program's head updates never resize the mint). */
static bool metadata_ok(const uint8_t *v, uint64_t n, const SolPubkey *mint, const SolAccountInfo *repo,
                        const uint8_t *repo_id) {
  if (n < 64 || !sol_bytes_eq(v, repo->key, 32) || !sol_bytes_eq(v + 32, mint, 32)) return false;
  uint64_t at = 64, len;
  for (int i = 0; i < 3; i++)
    if (!take_string(v, n, &at, &len)) return false;
  if (at + 4 > n) return false;
  uint64_t count = read_u32(v + at);
  at += 4;
  uint8_t want[64];
  hex32(repo_id, want);
  bool repo_ok = false, head_ok = false;
  for (uint64_t k = 0; k < count; k++) {
    uint64_t key_len, value_len;
    const uint8_t *key = take_string(v, n, &at, &key_len);
    const uint8_t *value = key ? take_string(v, n, &at, &value_len) : NULL;
    if (!value) return false;
    if (key_len == 4 && sol_bytes_eq(key, "repo", 4))
      repo_ok = value_len == 64 && sol_bytes_eq(value, want, 64);
    if (key_len == 4 && sol_bytes_eq(key, "head", 4)) head_ok = value_len == 64;
  }
  return repo_ok && head_ok;
}

/* Mint (82-byte base, account type 1 @165, TLV extensions from 166): no mint authority, no
 * freeze authority, supply 1, decimals 0, initialized; extensions exactly MetadataPointer (to
 * the mint itself, without an authority) and TokenMetadata (metadata_ok): anything else could move, freeze, tax or
 * burn the NFT behind the program's back. */
static bool mint_ok(const SolAccountInfo *m, const SolAccountInfo *repo, const uint8_t *repo_id) {
  const uint8_t *d = m->data;
  uint64_t len = m->data_len;
  if (!sol_pubkey_eq(m->owner, &TOKEN_2022_PROGRAM_ID) || len < 166 || d[165] != 1) return false;
  if (read_u32(d) != 0 || sol_read_u64(d + 36) != 1 || d[44] != 0 || d[45] != 1 ||
      read_u32(d + 46) != 0)
    return false;
  bool pointer = false, metadata = false;
  for (uint64_t at = 166; at < len;) {
    uint64_t type = at + 4 <= len ? sol_read_u16(d + at) : 0;
    if (type == 0) { /* Token-2022's end of the TLV list: only zero padding may follow */
      if (!sol_is_zero(d + at, len - at)) return false;
      break;
    }
    uint64_t n = sol_read_u16(d + at + 2);
    const uint8_t *v = d + at + 4;
    if (n > len - at - 4) return false;
    /* MetadataPointer: no authority (nobody can repoint wallets elsewhere), address = the mint */
    if (type == EXT_METADATA_POINTER && !pointer && n == 64 && sol_is_zero(v, 32) &&
        sol_bytes_eq(v + 32, m->key, 32))
      pointer = true;
    else if (type == EXT_TOKEN_METADATA && !metadata && metadata_ok(v, n, m->key, repo, repo_id))
      metadata = true;
    else
      return false;
    at += 4 + n;
  }
  return pointer && metadata;
}

/* ---- contributors' share: 128-bit arithmetic (the target has no 128-bit libcalls) ------------ */

typedef struct {
  uint64_t lo, hi;
} U128;

static void mul64(uint64_t a, uint64_t b, U128 *out) {
  uint64_t a0 = a & 0xffffffff, a1 = a >> 32, b0 = b & 0xffffffff, b1 = b >> 32;
  uint64_t p00 = a0 * b0, p01 = a0 * b1, p10 = a1 * b0, p11 = a1 * b1;
  uint64_t mid = (p00 >> 32) + (p01 & 0xffffffff) + (p10 & 0xffffffff);
  out->lo = (mid << 32) | (p00 & 0xffffffff);
  out->hi = p11 + (p01 >> 32) + (p10 >> 32) + (mid >> 32);
}

static bool ge128(const U128 *a, const U128 *b) {
  return a->hi > b->hi || (a->hi == b->hi && a->lo >= b->lo);
}

/* floor(n / d) for d != 0 and d < 2^127, when the quotient fits in 64 bits (as every caller's
 * does: S*w/W <= S and p*bps/10000 <= p). Bit by bit unless both fit in 64 bits. */
static uint64_t div128(const U128 *n, const U128 *d) {
  if (!n->hi && !d->hi) return n->lo / d->lo;
  U128 rem = {0, 0};
  uint64_t q = 0;
  for (int i = 127; i >= 0; i--) {
    uint64_t bit = i >= 64 ? (n->hi >> (i - 64)) & 1 : (n->lo >> i) & 1;
    rem.hi = (rem.hi << 1) | (rem.lo >> 63);
    rem.lo = (rem.lo << 1) | bit;
    q <<= 1;
    if (ge128(&rem, d)) {
      rem.hi -= d->hi + (rem.lo < d->lo);
      rem.lo -= d->lo;
      q |= 1;
    }
  }
  return q;
}

/* Adds each input's weight to its author's tally (merges of NFT-bound repositories). */
static uint64_t tally(Nft *nft, const Commit *const *in, const uint8_t *weights, uint64_t n) {
  for (uint64_t k = 0; k < n; k++) {
    uint64_t w = sol_read_u64(weights + 8 * k), i = 0;
    if (!w) continue;
    while (i < nft->n_contributors && !sol_bytes_eq(nft->contributors[i].key, in[k]->author, 32)) i++;
    if (i == nft->n_contributors) {
      if (i == MAX_CONTRIBUTORS) return E_CONTRIBUTOR_TABLE_FULL;
      memcpy(nft->contributors[i].key, in[k]->author, 32);
      nft->n_contributors += 1;
    }
    if (nft->contributors[i].weight + w < w) return E_ARITHMETIC_OVERFLOW;
    nft->contributors[i].weight += w;
  }
  return 0;
}

static uint64_t transfer_lamports(const SolAccountInfo *from, const SolAccountInfo *to,
                                  uint64_t amount) {
  uint8_t data[12] = {2, 0, 0, 0}; /* System Transfer; `from` signed the transaction */
  sol_write_u64(data + 4, amount);
  SolAccountInfo infos[2] = {*from, *to};
  return sol_system_invoke(data, 12, infos, 2, NULL);
}

static bool valid_utf8(const uint8_t *s, uint64_t n) {
  for (uint64_t i = 0; i < n;) {
    uint64_t c = s[i], k, cp;
    if (c < 0x80) {
      i++;
      continue;
    }
    if ((c & 0xe0) == 0xc0) k = 1, cp = c & 0x1f;
    else if ((c & 0xf0) == 0xe0) k = 2, cp = c & 0x0f;
    else if ((c & 0xf8) == 0xf0) k = 3, cp = c & 0x07;
    else return false;
    if (i + k >= n) return false;
    for (uint64_t j = 1; j <= k; j++) {
      if ((s[i + j] & 0xc0) != 0x80) return false;
      cp = (cp << 6) | (s[i + j] & 0x3f);
    }
    if ((k == 1 && cp < 0x80) || (k == 2 && cp < 0x800) || (k == 3 && cp < 0x10000) ||
        cp > 0x10ffff || (cp >= 0xd800 && cp <= 0xdfff))
      return false;
    i += k + 1;
  }
  return true;
}

/* ---- instructions ----------------------------------------------------------------------- */

/* create_repo(repo_id[32], mint[32], body_digest[32]); accounts: owner [s,w], repo PDA [w],
 * instructions sysvar, system program. repo_id must be the commit hash of a genesis authored by
 * the owner: commit_hash(owner, init, no parents, body_digest) == repo_id. The transaction must
 * carry an Ed25519 precompile proof of the owner's signature over it (the genesis commit's own). */
static uint64_t create_repo(SolParameters *p) {
  if (p->data_len != 97) return E_INVALID_INSTRUCTION_DATA;
  if (p->ka_num < 4) return E_NOT_ENOUGH_ACCOUNTS;
  uint64_t rc = check_signer(&p->ka[0], true);
  if (rc) return rc;
  if (!is_system_program(&p->ka[3])) return E_INVALID_SYSTEM_PROGRAM;
  if (sol_pubkey_eq(p->ka[1].owner, p->program_id)) return E_REPO_ALREADY_EXISTS;
  if (!sol_is_zero(p->data + 33, 32)) return E_INVALID_MINT; /* bound later, by bind_nft */
  const uint8_t *repo_id = p->data + 1;
  uint8_t genesis[32];
  Preimage pre = {p->ka[0].key->x, NULL, p->data + 65, KIND_INIT, 0};
  commit_hash(&pre, genesis);
  if (!sol_bytes_eq(genesis, repo_id, 32)) return E_COMMIT_HASH_MISMATCH;
  rc = check_signature_proof(&p->ka[2], p->ka[0].key->x, repo_id);
  if (rc) return rc;
  PdaSpec spec = {{{(const uint8_t *)"repo", 4}, {repo_id, 32}}, 2, sizeof(Repo)};
  uint8_t bump;
  rc = create_pda(p, 1, &spec, &bump);
  if (rc) return rc;
  Repo *r = (Repo *)p->ka[1].data; /* fresh accounts are zero-filled */
  r->tag = TAG_REPO;
  r->version = LAYOUT_VERSION;
  r->bump = bump;
  memcpy(r->repo_id, repo_id, 32);
  memcpy(r->owner, p->ka[0].key, 32);
  return 0;
}

/* add_member(member[32]); accounts: owner [s,w], repo, member PDA [w], system program
 * (+ the four NFT accounts) */
static uint64_t add_member(SolParameters *p) {
  if (p->data_len != 33) return E_INVALID_INSTRUCTION_DATA;
  if (p->ka_num < 4) return E_NOT_ENOUGH_ACCOUNTS;
  Ctl c = {NULL, NULL, 4};
  uint64_t rc = control(p, false, &c);
  if (rc) return rc;
  Repo *r = c.repo;
  if (!p->ka[0].is_writable) return E_ACCOUNT_NOT_WRITABLE;
  if (!is_system_program(&p->ka[3])) return E_INVALID_SYSTEM_PROGRAM;
  if (sol_pubkey_eq(p->ka[2].owner, p->program_id)) return E_MEMBER_ALREADY_EXISTS;
  const uint8_t *member = p->data + 1;
  PdaSpec spec = {{{(const uint8_t *)"member", 6}, {r->repo_id, 32}, {member, 32}}, 3,
                  sizeof(Member)};
  uint8_t bump;
  rc = create_pda(p, 2, &spec, &bump);
  if (rc) return rc;
  Member *m = (Member *)p->ka[2].data;
  m->tag = TAG_MEMBER;
  m->version = LAYOUT_VERSION;
  m->bump = bump;
  memcpy(m->repo_id, r->repo_id, 32);
  memcpy(m->member, member, 32);
  m->added_slot = sol_current_slot();
  return 0;
}

/* remove_member(member[32]); accounts: owner [s,w], repo, member PDA [w] (+ the four NFT
 * accounts). Closes the record and refunds its rent to the owner (holder). */
static uint64_t remove_member(SolParameters *p) {
  if (p->data_len != 33) return E_INVALID_INSTRUCTION_DATA;
  if (p->ka_num < 3) return E_NOT_ENOUGH_ACCOUNTS;
  Ctl c = {NULL, NULL, 3};
  uint64_t rc = control(p, false, &c);
  if (rc) return rc;
  Repo *r = c.repo;
  SolAccountInfo *m = &p->ka[2];
  if (!as_member(m, p->program_id, r->repo_id, p->data + 1)) return E_NOT_A_MEMBER;
  if (!p->ka[0].is_writable || !m->is_writable) return E_ACCOUNT_NOT_WRITABLE;
  *p->ka[0].lamports += *m->lamports;
  *m->lamports = 0;
  memset(m->data, 0, m->data_len);
  return 0;
}

/* anchor_commit(body_digest[32], kind u8, flags u8, n u8, branch[32], parents[n][32],
 *               commitment[64] if flags & 1)
 * accounts: author [s,w], repo [w], commit PDA [w], author's member PDA (owner: any, e.g. the
 * repo), instructions sysvar, system program, parent commit PDAs (same order as parents)
 * (+ the four NFT accounts: a member may pass any account as the holder token account).
 * The anchored hash is commit_hash(author, kind, parents, body_digest), recomputed here; the
 * author's signature over it must be proven. */
static uint64_t anchor_commit(SolParameters *p) {
  const uint8_t *d = p->data;
  if (p->data_len < 68) return E_INVALID_INSTRUCTION_DATA;
  uint64_t kind = d[33], flags = d[34], n = d[35];
  if (flags & ~(uint64_t)FLAG_HAS_COMMITMENT) return E_INVALID_INSTRUCTION_DATA;
  if (n > MAX_PARENTS) return E_TOO_MANY_PARENTS;
  uint64_t g1 = flags ? 64 : 0;
  if (p->data_len != 68 + 32 * n + g1) return E_INVALID_INSTRUCTION_DATA;
  if (kind > KIND_REVERT || kind == KIND_MERGE || (kind == KIND_INIT) != (n == 0))
    return E_INVALID_KIND;
  if (p->ka_num < 6 + n) return E_NOT_ENOUGH_ACCOUNTS;
  const uint8_t *body_digest = d + 1, *branch = d + 36, *parents = d + 68;
  const uint8_t *commitment = g1 ? parents + 32 * n : NULL;

  SolAccountInfo *author = &p->ka[0];
  uint64_t rc = check_signer(author, true);
  if (rc) return rc;
  Repo *r = as_repo(&p->ka[1], p->program_id);
  if (!r) return E_INVALID_REPO_ACCOUNT;
  if (!p->ka[1].is_writable) return E_ACCOUNT_NOT_WRITABLE;
  Ctl ctl = {r, NULL, 6 + n};
  rc = nft_accounts(p, &ctl);
  if (rc) return rc;
  bool is_owner = ctl.nft ? holds(&p->ka[ctl.t], r->mint, author->key->x)
                          : sol_bytes_eq(author->key, r->owner, 32);
  if (!is_owner && !as_member(&p->ka[3], p->program_id, r->repo_id, author->key->x))
    /* the repo in the member slot claims the owner's path */
    return ctl.nft && sol_pubkey_eq(p->ka[3].key, p->ka[1].key) ? E_NOT_HOLDER : E_NOT_A_MEMBER;
  if (is_owner && ctl.nft) record_holder(ctl.nft, author->key->x);
  if (!is_system_program(&p->ka[5])) return E_INVALID_SYSTEM_PROGRAM;
  /* an update must carry the commitment its proof (prove_commit) will be checked against */
  if ((r->flags & REPO_REQUIRES_PROOFS) && kind != KIND_INIT && !commitment) return E_MISSING_COMMITMENT;
  if (has_duplicate(parents, n)) return E_DUPLICATE_PARENT;
  for (uint64_t k = 0; k < n; k++)
    if (!as_commit(&p->ka[6 + k], p->program_id, r->repo_id, parents + 32 * k))
      return E_PARENT_NOT_ANCHORED;
  if (sol_pubkey_eq(p->ka[2].owner, p->program_id)) return E_COMMIT_ALREADY_ANCHORED;
  uint8_t hash[32];
  Preimage pre = {author->key->x, parents, body_digest, kind, n};
  commit_hash(&pre, hash);
  /* a repository has one genesis: the commit whose hash is its id */
  if (kind == KIND_INIT && !sol_bytes_eq(hash, r->repo_id, 32)) return E_COMMIT_HASH_MISMATCH;
  rc = check_signature_proof(&p->ka[4], author->key->x, hash);
  if (rc) return rc;
  if (commitment) {
    static const uint8_t infinity[64] = {0};
    uint8_t check[64];
    if (!bn254_g1_add(commitment, infinity, check)) return E_INVALID_COMMITMENT;
  }
  int64_t slot = -1;
  if (!sol_is_zero(branch, 32)) {
    rc = branch_slot(r, branch, is_owner, &slot);
    if (rc) return rc;
    Branch *b = &r->branches[slot];
    if (!sol_is_zero(b->name, 32)) { /* existing branch: fast-forward only */
      bool ff = false;
      for (uint64_t k = 0; k < n && !ff; k++) ff = sol_bytes_eq(b->head, parents + 32 * k, 32);
      if (!ff) return E_NOT_FAST_FORWARD;
    }
  }
  NewCommit c = {hash, parents, commitment, n, (uint8_t)kind};
  rc = record_commit(p, r, &c);
  if (rc) return rc;
  if (slot >= 0) {
    memcpy(r->branches[slot].name, branch, 32);
    memcpy(r->branches[slot].head, hash, 32);
    rc = update_head_field(p, &ctl, branch, hash);
    if (rc) return rc;
  }
  return return_accumulator(r);
}

/* W = sum of the u64 weights; false when it overflows. */
static bool weight_total(const uint8_t *weights, uint64_t n, uint64_t *total) {
  *total = 0;
  for (uint64_t k = 0; k < n; k++) {
    uint64_t w = sol_read_u64(weights + 8 * k);
    if (*total + w < w) return false;
    *total += w;
  }
  return true;
}

/* sum_k w_k C_k into `sum` (infinity when every weight is 0). An input of weight 0 (e.g. a parent
 * that was only the merge base) contributes nothing, so it needs no commitment. */
static uint64_t weighted_sum(const Commit *const *in, const uint8_t *weights, uint64_t n,
                             uint8_t sum[64]) {
  uint8_t term[64];
  bool first = true;
  memset(sum, 0, 64);
  for (uint64_t k = 0; k < n; k++) {
    uint64_t w = sol_read_u64(weights + 8 * k);
    if (!w) continue;
    if (!(in[k]->flags & FLAG_HAS_COMMITMENT)) return E_MISSING_INPUT_COMMITMENT;
    if (!bn254_g1_mul_u64(in[k]->commitment, w, first ? sum : term)) return E_INVALID_COMMITMENT;
    if (!first && !bn254_g1_add(sum, term, sum)) return E_INVALID_COMMITMENT;
    first = false;
  }
  return 0;
}

/* Without a remainder (old clients): C_merge == sum_k w_k C_k, the commitment to the weighted sum S.
 * With one (FedAvg, issue 15): sum_k w_k C_k == W C_d + C_r, W = sum_k w_k, where C_d commits to
 * the merged delta d = round(S / W) and C_r to r = S - W d; C_d is what gets recorded. The range
 * of r is not checked here (d + 1, r - W passes too): prove_merge checks it with a remainder proof. */
static uint64_t check_merge_commitments(const Commit *const *in, const uint8_t *weights, uint64_t n,
                                        const uint8_t *commitment, const uint8_t *remainder) {
  uint8_t sum[64], rhs[64];
  uint64_t rc = weighted_sum(in, weights, n, sum), total;
  if (rc) return rc;
  if (remainder) { /* mul and add validate C_d and C_r as G1 points */
    if (!weight_total(weights, n, &total)) return E_INVALID_INSTRUCTION_DATA;
    if (!bn254_g1_mul_u64(commitment, total, rhs)) return E_INVALID_COMMITMENT;
    if (!bn254_g1_add(rhs, remainder, rhs)) return E_INVALID_COMMITMENT;
    commitment = rhs;
  }
  return sol_bytes_eq(sum, commitment, 64) ? 0 : E_MERGE_COMMITMENT_MISMATCH;
}

/* A repository that requires proofs merges only proven updates: every input of nonzero weight is
 * PROVEN, or is itself a merge (not provable: its inputs met this rule when it was anchored). */
static uint64_t check_inputs_proven(const Commit *const *in, const uint8_t *weights, uint64_t n) {
  for (uint64_t k = 0; k < n; k++)
    if (sol_read_u64(weights + 8 * k) && in[k]->kind != KIND_MERGE && !(in[k]->flags & FLAG_PROVEN))
      return E_INPUT_NOT_PROVEN;
  return 0;
}

/* merge(body_digest[32], flags u8, n u8, branch[32], inputs[n][32], weights[n] u64,
 *       commitment[64] if flags & 1, remainder[64] if flags & 2 (flags: 0, 1 or 3))
 * accounts: owner [s,w], repo [w], commit PDA [w], instructions sysvar, system program,
 * input commit PDAs (same order as inputs) (+ the four NFT accounts). The merge commit hash is recomputed as
 * commit_hash(owner, merge, inputs, body_digest): inputs are its parents in the commit's order. */
static uint64_t merge(SolParameters *p) {
  const uint8_t *d = p->data;
  if (p->data_len < 67) return E_INVALID_INSTRUCTION_DATA;
  uint64_t flags = d[33], n = d[34], total;
  bool has_c = flags & FLAG_HAS_COMMITMENT, has_r = flags & FLAG_HAS_REMAINDER;
  if (flags & ~(uint64_t)(FLAG_HAS_COMMITMENT | FLAG_HAS_REMAINDER) || (has_r && !has_c) || n == 0)
    return E_INVALID_INSTRUCTION_DATA;
  if (n > MAX_PARENTS) return E_TOO_MANY_PARENTS;
  uint64_t g1 = (has_c ? 64 : 0) + (has_r ? 64 : 0);
  if (p->data_len != 67 + 40 * n + g1) return E_INVALID_INSTRUCTION_DATA;
  if (p->ka_num < 5 + n) return E_NOT_ENOUGH_ACCOUNTS;
  const uint8_t *body_digest = d + 1, *branch = d + 35, *inputs = d + 67;
  const uint8_t *weights = inputs + 32 * n;
  const uint8_t *commitment = has_c ? weights + 8 * n : NULL;
  const uint8_t *remainder = has_r ? commitment + 64 : NULL;
  if (has_r && !weight_total(weights, n, &total)) return E_INVALID_INSTRUCTION_DATA;

  Ctl ctl = {NULL, NULL, 5 + n};
  uint64_t rc = control(p, true, &ctl);
  if (rc) return rc;
  Repo *r = ctl.repo;
  if (!p->ka[0].is_writable) return E_ACCOUNT_NOT_WRITABLE;
  if (!is_system_program(&p->ka[4])) return E_INVALID_SYSTEM_PROGRAM;
  if (sol_is_zero(branch, 32)) return E_INVALID_BRANCH;
  if (has_duplicate(inputs, n)) return E_DUPLICATE_PARENT;
  const Commit *in[MAX_PARENTS];
  for (uint64_t k = 0; k < n; k++) {
    in[k] = as_commit(&p->ka[5 + k], p->program_id, r->repo_id, inputs + 32 * k);
    if (!in[k]) return E_INPUT_NOT_ANCHORED;
  }
  if (sol_pubkey_eq(p->ka[2].owner, p->program_id)) return E_COMMIT_ALREADY_ANCHORED;
  uint8_t hash[32]; /* the merge commit's parents are its inputs, in commit order */
  Preimage pre = {p->ka[0].key->x, inputs, body_digest, KIND_MERGE, n};
  commit_hash(&pre, hash);
  rc = check_signature_proof(&p->ka[3], p->ka[0].key->x, hash);
  if (rc) return rc;
  if (r->flags & REPO_REQUIRES_PROOFS) {
    rc = check_inputs_proven(in, weights, n);
    if (rc) return rc;
  }
  if (commitment) {
    rc = check_merge_commitments(in, weights, n, commitment, remainder);
    if (rc) return rc;
  }
  int64_t slot;
  rc = branch_slot(r, branch, true, &slot);
  if (rc) return rc;
  if (ctl.nft) { /* the contributors' tally: each input's weight to its author */
    rc = tally(ctl.nft, in, weights, n);
    if (rc) return rc;
  }
  NewCommit c = {hash, inputs, commitment, n, KIND_MERGE};
  rc = record_commit(p, r, &c);
  if (rc) return rc;
  memcpy(r->branches[slot].name, branch, 32);
  memcpy(r->branches[slot].head, hash, 32);
  rc = update_head_field(p, &ctl, branch, hash);
  if (rc) return rc;
  return return_accumulator(r);
}

/* set_head(branch[32], commit_hash[32]); accounts: owner [s], repo [w], commit PDA (+ the four
 * NFT accounts). A zero commit_hash deletes the branch (the commit account is then not read;
 * the metadata "head" field of a deleted tracked branch keeps its last value). */
static uint64_t set_head(SolParameters *p) {
  if (p->data_len != 65) return E_INVALID_INSTRUCTION_DATA;
  if (p->ka_num < 3) return E_NOT_ENOUGH_ACCOUNTS;
  Ctl ctl = {NULL, NULL, 3};
  uint64_t rc = control(p, true, &ctl);
  if (rc) return rc;
  Repo *r = ctl.repo;
  const uint8_t *branch = p->data + 1, *hash = p->data + 33;
  if (sol_is_zero(branch, 32)) return E_INVALID_BRANCH;
  int64_t slot;
  if (sol_is_zero(hash, 32)) {
    rc = branch_slot(r, branch, false, &slot);
    if (rc) return rc;
    memset(&r->branches[slot], 0, sizeof(Branch));
    return 0;
  }
  if (!as_commit(&p->ka[2], p->program_id, r->repo_id, hash)) return E_HEAD_NOT_IN_REPO;
  rc = branch_slot(r, branch, true, &slot);
  if (rc) return rc;
  memcpy(r->branches[slot].name, branch, 32);
  memcpy(r->branches[slot].head, hash, 32);
  return update_head_field(p, &ctl, branch, hash);
}

/* bind_nft(share_bps u16, flags u8, head_branch[32]); accounts: owner [s,w], repo [w],
 * nft PDA [w], mint, holder token account, system program. Binds the repository, once, to a
 * Token-2022 NFT (mint_ok) that the owner holds; from then on the holder controls the repo. */
static uint64_t bind_nft(SolParameters *p) {
  if (p->data_len != 36) return E_INVALID_INSTRUCTION_DATA;
  if (p->ka_num < 6) return E_NOT_ENOUGH_ACCOUNTS;
  uint64_t share = sol_read_u16(p->data + 1), flags = p->data[3];
  const uint8_t *head_branch = p->data + 4;
  if (flags & ~(uint64_t)FLAG_SHARE_LOCKED) return E_INVALID_INSTRUCTION_DATA;
  if (share > MAX_SHARE_BPS) return E_INVALID_SHARE;
  if (sol_is_zero(head_branch, 32)) return E_INVALID_BRANCH;
  uint64_t rc = check_signer(&p->ka[0], true);
  if (rc) return rc;
  Repo *r = as_repo(&p->ka[1], p->program_id);
  if (!r) return E_INVALID_REPO_ACCOUNT;
  if (!p->ka[1].is_writable) return E_ACCOUNT_NOT_WRITABLE;
  if (!sol_is_zero(r->mint, 32) || sol_pubkey_eq(p->ka[2].owner, p->program_id))
    return E_NFT_ALREADY_BOUND;
  if (!sol_bytes_eq(p->ka[0].key, r->owner, 32)) return E_NOT_OWNER;
  if (!is_system_program(&p->ka[5])) return E_INVALID_SYSTEM_PROGRAM;
  const SolAccountInfo *mint = &p->ka[3];
  if (!mint_ok(mint, &p->ka[1], r->repo_id)) return E_INVALID_MINT;
  if (!holds(&p->ka[4], mint->key->x, p->ka[0].key->x)) return E_NOT_HOLDER;
  PdaSpec spec = {{{(const uint8_t *)"nft", 3}, {r->repo_id, 32}}, 2, sizeof(Nft)};
  uint8_t bump;
  rc = create_pda(p, 2, &spec, &bump);
  if (rc) return rc;
  Nft *n = (Nft *)p->ka[2].data;
  n->tag = TAG_NFT;
  n->version = LAYOUT_VERSION;
  n->bump = bump;
  n->flags = (uint8_t)flags;
  memcpy(n->repo_id, r->repo_id, 32);
  memcpy(n->mint, mint->key, 32);
  memcpy(n->holder, p->ka[0].key, 32);
  memcpy(n->head_branch, head_branch, 32);
  n->share_bps = (uint16_t)share;
  memcpy(r->mint, mint->key, 32);
  return 0;
}

/* The repo at ka[repo] and its nft record at ka[repo + 1] (NFT-bound repos only). */
static uint64_t nft_record(SolParameters *p, uint64_t repo, Repo **r, Nft **n) {
  *r = as_repo(&p->ka[repo], p->program_id);
  if (!*r) return E_INVALID_REPO_ACCOUNT;
  if (sol_is_zero((*r)->mint, 32)) return E_INVALID_NFT_ACCOUNT;
  *n = as_nft(&p->ka[repo + 1], p->program_id, *r);
  return *n ? 0 : E_INVALID_NFT_ACCOUNT;
}

/* sync_holder(); accounts: repo, nft [w], holder token account. Permissionless: records the
 * owner of a token account that holds the NFT (after a plain Token-2022 transfer). */
static uint64_t sync_holder(SolParameters *p) {
  if (p->data_len != 1) return E_INVALID_INSTRUCTION_DATA;
  if (p->ka_num < 3) return E_NOT_ENOUGH_ACCOUNTS;
  Repo *r;
  Nft *n;
  uint64_t rc = nft_record(p, 0, &r, &n);
  if (rc) return rc;
  if (!p->ka[1].is_writable) return E_ACCOUNT_NOT_WRITABLE;
  const uint8_t *t = token_account(&p->ka[2], r->mint);
  if (!t || sol_read_u64(t + 64) != 1) return E_NOT_HOLDER;
  record_holder(n, t + 32);
  return 0;
}

/* set_share(share_bps u16); accounts: holder [s], repo, nft [w], holder token account. */
static uint64_t set_share(SolParameters *p) {
  if (p->data_len != 3) return E_INVALID_INSTRUCTION_DATA;
  if (p->ka_num < 4) return E_NOT_ENOUGH_ACCOUNTS;
  uint64_t rc = check_signer(&p->ka[0], false);
  if (rc) return rc;
  Repo *r;
  Nft *n;
  rc = nft_record(p, 1, &r, &n);
  if (rc) return rc;
  if (!p->ka[2].is_writable) return E_ACCOUNT_NOT_WRITABLE;
  if (!holds(&p->ka[3], r->mint, p->ka[0].key->x)) return E_NOT_HOLDER;
  if (n->flags & FLAG_SHARE_LOCKED) return E_SHARE_LOCKED;
  uint64_t share = sol_read_u16(p->data + 1);
  if (share > MAX_SHARE_BPS) return E_INVALID_SHARE;
  record_holder(n, p->ka[0].key->x);
  n->share_bps = (uint16_t)share;
  return 0;
}

/* Would a System transfer of `amount` to `to` pass the runtime's rent rule? An account may not
 * end a transaction holding lamports below the rent-exempt minimum of its size (a 0-lamport
 * wallet cannot receive a small payment). */
static uint64_t pushable(const SolAccountInfo *to, uint64_t amount, uint64_t *wallet_need, bool *ok) {
  uint64_t have = *to->lamports;
  /* a wallet (0 bytes) reuses the first reading of the Rent sysvar: ~100 CU per contributor less */
  uint64_t need = to->data_len == 0 && *wallet_need ? *wallet_need : sol_rent_exempt_minimum(to->data_len);
  if (!need) return E_RENT_UNAVAILABLE;
  if (to->data_len == 0) *wallet_need = need;
  *ok = have + amount < have || have + amount >= need;
  return 0;
}

/* sell(price u64, sale_seq u64); accounts: seller [s,w], buyer [s,w], repo, nft [w], mint,
 * seller token account [w], buyer token account [w], Token-2022, System program, then exactly
 * nft.n_contributors contributor accounts [w] in table order. One instruction: the buyer pays
 * each contributor floor(S * w_i / W) with S = floor(price * share_bps / 10000), W = sum w_i, and
 * the seller the rest (the floors' dust); the NFT moves seller -> buyer (transfer_checked).
 * Pull when push cannot work: a part the rent rule forbids pushing (pushable) goes to the nft
 * PDA instead and is added to that contributor's `owed` (claim pays it), so an emptied wallet
 * cannot block the sale. */
static uint64_t sell(SolParameters *p) {
  if (p->data_len != 17) return E_INVALID_INSTRUCTION_DATA;
  if (p->ka_num < 9) return E_NOT_ENOUGH_ACCOUNTS;
  SolAccountInfo *seller = &p->ka[0], *buyer = &p->ka[1], *mint = &p->ka[4];
  SolAccountInfo *seller_token = &p->ka[5], *buyer_token = &p->ka[6];
  uint64_t rc = check_signer(seller, true);
  if (!rc) rc = check_signer(buyer, true);
  if (rc) return rc;
  Repo *r;
  Nft *n;
  rc = nft_record(p, 2, &r, &n);
  if (rc) return rc;
  if (!p->ka[3].is_writable || !seller_token->is_writable || !buyer_token->is_writable)
    return E_ACCOUNT_NOT_WRITABLE;
  if (!sol_bytes_eq(mint->key, r->mint, 32)) return E_INVALID_NFT_ACCOUNT;
  if (!is_token_program(&p->ka[7])) return E_INVALID_TOKEN_PROGRAM;
  if (!is_system_program(&p->ka[8])) return E_INVALID_SYSTEM_PROGRAM;
  if (!holds(seller_token, r->mint, seller->key->x)) return E_NOT_HOLDER;
  if (sol_read_u64(p->data + 9) != n->sale_seq) return E_STALE_OFFER;
  const uint8_t *bt = token_account(buyer_token, r->mint);
  if (!bt || !sol_bytes_eq(bt + 32, buyer->key, 32) || sol_pubkey_eq(buyer->key, seller->key))
    return E_INVALID_BUYER_ACCOUNT;
  uint64_t count = n->n_contributors;
  if (p->ka_num != 9 + count) return E_CONTRIBUTOR_MISMATCH;
  U128 total = {0, 0};
  for (uint64_t i = 0; i < count; i++) {
    if (!sol_bytes_eq(p->ka[9 + i].key, n->contributors[i].key, 32)) return E_CONTRIBUTOR_MISMATCH;
    if (!p->ka[9 + i].is_writable) return E_ACCOUNT_NOT_WRITABLE;
    total.lo += n->contributors[i].weight;
    total.hi += total.lo < n->contributors[i].weight;
  }
  uint64_t price = sol_read_u64(p->data + 1), paid = 0;
  U128 x;
  const U128 bps = {MAX_SHARE_BPS, 0};
  mul64(price, n->share_bps, &x);
  uint64_t share = div128(&x, &bps), waiting = 0, wallet_need = 0;
  for (uint64_t i = 0; i < count && share; i++) {
    Contributor *c = &n->contributors[i];
    mul64(share, c->weight, &x);
    uint64_t amount = div128(&x, &total);
    paid += amount; /* <= share <= price */
    /* a contributing buyer keeps its own part: no self-transfer CPI */
    if (!amount || sol_pubkey_eq(p->ka[9 + i].key, buyer->key)) continue;
    bool ok;
    rc = pushable(&p->ka[9 + i], amount, &wallet_need, &ok);
    if (rc) return rc;
    if (!ok) { /* waits in the nft PDA: one transfer for all such parts, below */
      if (c->owed + amount < amount) return E_ARITHMETIC_OVERFLOW;
      c->owed += amount;
      waiting += amount; /* <= paid <= price */
      continue;
    }
    rc = transfer_lamports(buyer, &p->ka[9 + i], amount);
    if (rc) return rc;
  }
  if (waiting) {
    rc = transfer_lamports(buyer, &p->ka[3], waiting);
    if (rc) return rc;
  }
  if (price - paid) {
    rc = transfer_lamports(buyer, seller, price - paid);
    if (rc) return rc;
  }
  uint8_t data[10] = {12}; /* TransferChecked, amount 1, decimals 0; the seller signed the tx */
  sol_write_u64(data + 1, 1);
  SolAccountMeta metas[4] = {{seller_token->key, true, false}, {mint->key, false, false},
                             {buyer_token->key, true, false}, {seller->key, false, true}};
  SolInstruction ix = {(SolPubkey *)&TOKEN_2022_PROGRAM_ID, metas, 4, data, 10};
  SolAccountInfo infos[4] = {*seller_token, *mint, *buyer_token, *seller};
  rc = sol_invoke_signed_c(&ix, infos, 4, NULL, 0);
  if (rc) return rc;
  memcpy(n->holder, buyer->key, 32);
  n->sale_seq += 1;
  return 0;
}

/* set_uri(uri bytes); accounts: holder [s,w], repo, nft, holder token account, mint [w],
 * Token-2022, System program. CPI UpdateField(Field::Uri) signed by the repo PDA; if the mint
 * grew past its rent-exempt balance, the holder pays the difference (System transfer). */
static uint64_t set_uri(SolParameters *p) {
  uint64_t len = p->data_len - 1;
  if (len < 1 || len > MAX_URI || !valid_utf8(p->data + 1, len)) return E_INVALID_INSTRUCTION_DATA;
  if (p->ka_num < 7) return E_NOT_ENOUGH_ACCOUNTS;
  SolAccountInfo *holder = &p->ka[0], *mint = &p->ka[4];
  uint64_t rc = check_signer(holder, true);
  if (rc) return rc;
  Repo *r;
  Nft *n;
  rc = nft_record(p, 1, &r, &n);
  if (rc) return rc;
  if (!sol_bytes_eq(mint->key, r->mint, 32)) return E_INVALID_NFT_ACCOUNT;
  if (!mint->is_writable) return E_ACCOUNT_NOT_WRITABLE;
  if (!is_token_program(&p->ka[5])) return E_INVALID_TOKEN_PROGRAM;
  if (!is_system_program(&p->ka[6])) return E_INVALID_SYSTEM_PROGRAM;
  if (!holds(&p->ka[3], r->mint, holder->key->x)) return E_NOT_HOLDER;
  uint8_t data[8 + 1 + 4 + MAX_URI];
  memcpy(data, UPDATE_FIELD_DISCRIMINATOR, 8);
  data[8] = 2; /* Field::Uri */
  write_u32(data + 9, len);
  memcpy(data + 13, p->data + 1, len);
  rc = metadata_cpi(p, r, mint, data, 13 + len);
  if (rc) return rc;
  sol_refresh_len(mint);
  uint64_t need = sol_rent_exempt_minimum(mint->data_len);
  if (!need) return E_RENT_UNAVAILABLE;
  return *mint->lamports < need ? transfer_lamports(holder, mint, need - *mint->lamports) : 0;
}

/* claim(index u8); accounts: repo, nft [w], contributor [w] (= table entry `index`).
 * Permissionless: pays the entry's `owed` from the nft PDA's lamports (program-owned: debited
 * directly, no CPI) and sets it to 0. NOTHING_OWED when 0; CONTRIBUTOR_UNFUNDED when the payment
 * would leave the contributor below its rent-exempt minimum (fund the wallet first). Only owed
 * lamports are taken, so the nft PDA keeps its own rent-exempt minimum (checked). */
static uint64_t claim(SolParameters *p) {
  if (p->data_len != 2) return E_INVALID_INSTRUCTION_DATA;
  if (p->ka_num < 3) return E_NOT_ENOUGH_ACCOUNTS;
  Repo *r;
  Nft *n;
  uint64_t rc = nft_record(p, 0, &r, &n);
  if (rc) return rc;
  SolAccountInfo *nft = &p->ka[1], *to = &p->ka[2];
  if (!nft->is_writable || !to->is_writable) return E_ACCOUNT_NOT_WRITABLE;
  uint64_t i = p->data[1];
  if (i >= n->n_contributors || !sol_bytes_eq(to->key, n->contributors[i].key, 32))
    return E_CONTRIBUTOR_MISMATCH;
  uint64_t owed = n->contributors[i].owed;
  if (!owed) return E_NOTHING_OWED;
  bool ok;
  uint64_t wallet_need = 0;
  rc = pushable(to, owed, &wallet_need, &ok);
  if (rc) return rc;
  if (!ok) return E_CONTRIBUTOR_UNFUNDED;
  uint64_t keep = sol_rent_exempt_minimum(sizeof(Nft));
  if (!keep || *nft->lamports < owed || *nft->lamports - owed < keep) return E_RENT_UNAVAILABLE;
  *nft->lamports -= owed;
  *to->lamports += owed;
  n->contributors[i].owed = 0;
  return 0;
}

/* ---- update proofs (issue 15): the verifying key, prove_commit ------------------------------ */

/* Which key a write/seal instruction addresses: the update key or the merge remainder key. */
typedef struct {
  uint8_t tag;        /* TAG_ZKVK or TAG_ZKRVK */
  const char *seed;   /* "zkvk" or "zkrvk" */
  uint64_t seed_len;
  uint8_t repo_flag;  /* set at seal: REPO_REQUIRES_PROOFS or REPO_HAS_REMAINDER_KEY */
} KeyKind;

static const KeyKind UPDATE_KEY = {TAG_ZKVK, "zkvk", 4, REPO_REQUIRES_PROOFS};
static const KeyKind REMAINDER_KEY = {TAG_ZKRVK, "zkrvk", 5, REPO_HAS_REMAINDER_KEY};

/* The repository's key record of kind `tag` (the tag tells the two records apart: an update key
 * cannot stand in for the remainder key, nor the other way round). */
static ZkVk *as_vk(const SolAccountInfo *a, const SolPubkey *program_id, const Repo *r, uint8_t tag) {
  if (!sol_pubkey_eq(a->owner, program_id) || a->data_len != sizeof(ZkVk)) return NULL;
  ZkVk *v = (ZkVk *)a->data;
  if (v->tag != tag || v->version != LAYOUT_VERSION || !sol_bytes_eq(v->repo_id, r->repo_id, 32))
    return NULL;
  return v;
}

/* write_vk / write_rvk(offset u16, bytes); accounts: owner [s,w], repo, key PDA [w], system program
 * (+ the four NFT accounts). Copies the bytes into the key buffer at offset, creating the record on
 * the first write; any number of times, in any order, until sealed (a replay rewrites the same bytes). */
static uint64_t write_key(SolParameters *p, const KeyKind *kind) {
  if (p->data_len < 4) return E_INVALID_INSTRUCTION_DATA;
  uint64_t at = sol_read_u16(p->data + 1), len = p->data_len - 3;
  if (at + len > VK_CAPACITY) return E_INVALID_INSTRUCTION_DATA;
  if (p->ka_num < 4) return E_NOT_ENOUGH_ACCOUNTS;
  Ctl ctl = {NULL, NULL, 4};
  uint64_t rc = control(p, false, &ctl);
  if (rc) return rc;
  Repo *r = ctl.repo;
  if (!p->ka[0].is_writable) return E_ACCOUNT_NOT_WRITABLE;
  if (!is_system_program(&p->ka[3])) return E_INVALID_SYSTEM_PROGRAM;
  SolAccountInfo *acct = &p->ka[2];
  ZkVk *v;
  if (sol_pubkey_eq(acct->owner, p->program_id)) {
    v = as_vk(acct, p->program_id, r, kind->tag);
    if (!v) return E_INVALID_VK_ACCOUNT;
    if (!acct->is_writable) return E_ACCOUNT_NOT_WRITABLE;
  } else {
    PdaSpec spec = {{{(const uint8_t *)kind->seed, kind->seed_len}, {r->repo_id, 32}}, 2, sizeof(ZkVk)};
    uint8_t bump;
    rc = create_pda(p, 2, &spec, &bump);
    if (rc) return rc;
    v = (ZkVk *)acct->data;
    v->tag = kind->tag;
    v->version = LAYOUT_VERSION;
    v->bump = bump;
    memcpy(v->repo_id, r->repo_id, 32);
  }
  if (v->flags & VK_SEALED) return E_VK_SEALED;
  memcpy(v->vk + at, p->data + 3, len);
  return 0;
}

/* seal_vk / seal_rvk(key_id[32], bound2[32] big-endian, vk_len u16); accounts: owner [s], repo [w],
 * key record [w] (+ the four NFT accounts). Checks that the first vk_len bytes written hash to key_id
 * (the key id the genesis policy names: VK_MISMATCH) and have a key's shape with B^2 < 2^sb
 * (zk_vk_check, zk_bound_ok: INVALID_VK; the remainder key takes no bound: bound2 must be zero);
 * the points are not checked here: the syscalls refuse a bad one at use (INVALID_PROOF_POINT). Then
 * the record is final and the repo flag of its kind is set. */
static uint64_t seal_key(SolParameters *p, const KeyKind *kind) {
  if (p->data_len != 67) return E_INVALID_INSTRUCTION_DATA;
  if (p->ka_num < 3) return E_NOT_ENOUGH_ACCOUNTS;
  Ctl ctl = {NULL, NULL, 3};
  uint64_t rc = control(p, true, &ctl);
  if (rc) return rc;
  ZkVk *v = as_vk(&p->ka[2], p->program_id, ctl.repo, kind->tag);
  if (!v) return E_INVALID_VK_ACCOUNT;
  if (!p->ka[2].is_writable) return E_ACCOUNT_NOT_WRITABLE;
  if (v->flags & VK_SEALED) return E_VK_SEALED;
  const uint8_t *key_id = p->data + 1, *bound2 = p->data + 33;
  uint64_t len = sol_read_u16(p->data + 65);
  if (len > VK_CAPACITY) return E_INVALID_VK;
  uint8_t digest[32];
  SolBytes key = {v->vk, len};
  sol_sha256(&key, 1, digest);
  if (!sol_bytes_eq(digest, key_id, 32)) return E_VK_MISMATCH;
  if (zk_vk_check(v->vk, len) || !zk_bound_ok(v->vk, bound2)) return E_INVALID_VK;
  if (kind->tag == TAG_ZKRVK && !sol_is_zero(bound2, 32)) return E_INVALID_VK;
  memset(v->vk + len, 0, VK_CAPACITY - len); /* the record holds exactly the key */
  memcpy(v->key_id, key_id, 32);
  memcpy(v->bound2, bound2, 32);
  v->vk_len = (uint16_t)len;
  v->flags |= VK_SEALED;
  ctl.repo->flags |= kind->repo_flag;
  return 0;
}

/* prove_commit(commit_hash[32], proof_hash[32], proof[384]); accounts: author [s], repo, zkvk,
 * commit record [w]. Verifies the update proof against the repository's key and B^2, the record's
 * commitment and the proof hash given here (the author's: the program cannot recompute it, see
 * programs/README.md), the link first, then Groth16; sets FLAG_PROVEN. Idempotent: a record
 * already PROVEN returns success without looking at the proof. */
static uint64_t prove_commit(SolParameters *p) {
  if (p->data_len != 65 + ZK_PROOF_LEN) return E_INVALID_INSTRUCTION_DATA;
  if (p->ka_num < 4) return E_NOT_ENOUGH_ACCOUNTS;
  uint64_t rc = check_signer(&p->ka[0], false);
  if (rc) return rc;
  const Repo *r = as_repo(&p->ka[1], p->program_id);
  if (!r) return E_INVALID_REPO_ACCOUNT;
  if (!(r->flags & REPO_REQUIRES_PROOFS)) return E_NO_VERIFYING_KEY;
  const ZkVk *v = as_vk(&p->ka[2], p->program_id, r, TAG_ZKVK);
  if (!v || !(v->flags & VK_SEALED)) return E_INVALID_VK_ACCOUNT;
  const uint8_t *hash = p->data + 1, *proof_hash = p->data + 33, *proof = p->data + 65;
  Commit *c = (Commit *)as_commit(&p->ka[3], p->program_id, r->repo_id, hash);
  if (!c) return E_COMMIT_NOT_ANCHORED;
  if (!p->ka[3].is_writable) return E_ACCOUNT_NOT_WRITABLE;
  if (!sol_bytes_eq(c->author, p->ka[0].key, 32)) return E_NOT_AUTHOR;
  if (c->kind == KIND_INIT || c->kind == KIND_MERGE) return E_INVALID_KIND;
  if (!(c->flags & FLAG_HAS_COMMITMENT)) return E_MISSING_COMMITMENT;
  if (c->flags & FLAG_PROVEN) return 0;
  ZkStatement s = {v->vk, proof, c->commitment, proof_hash, v->bound2};
  switch (zk_verify(&s)) {
  case ZK_OK: break;
  case ZK_LINK: return E_PROOF_LINK_FAILS;
  case ZK_GROTH16: return E_PROOF_GROTH16_FAILS;
  default: return E_INVALID_PROOF_POINT; /* ZK_POINT (ZK_BOUND cannot happen: checked at seal) */
  }
  c->flags |= FLAG_PROVEN;
  return 0;
}

/* An input record of this repository (its hash not given: prove_merge checks the list of hashes
 * against the merge record's parents_digest instead). */
static const Commit *as_any_commit(const SolAccountInfo *a, const SolPubkey *program_id, const uint8_t *repo_id) {
  if (!sol_pubkey_eq(a->owner, program_id) || a->data_len != sizeof(Commit)) return NULL;
  const Commit *c = (const Commit *)a->data;
  return c->tag == TAG_COMMIT && c->version == LAYOUT_VERSION && sol_bytes_eq(c->repo_id, repo_id, 32) ? c : NULL;
}

/* The input records at ka[4..4+n) are the merge record's parents, in order: their hashes digest to
 * its parents_digest (the merge instruction recorded sha256 of its inputs). */
static uint64_t merge_inputs(SolParameters *p, const Commit *m, uint64_t n, const Commit **in) {
  if (n != m->n_parents) return E_INPUT_NOT_ANCHORED;
  SolBytes hashes[MAX_PARENTS];
  for (uint64_t k = 0; k < n; k++) {
    in[k] = as_any_commit(&p->ka[4 + k], p->program_id, m->repo_id);
    if (!in[k]) return E_INPUT_NOT_ANCHORED;
    hashes[k].addr = in[k]->commit_hash;
    hashes[k].len = 32;
  }
  uint8_t digest[32];
  sol_sha256(hashes, n, digest);
  return sol_bytes_eq(digest, m->parents_digest, 32) ? 0 : E_INPUT_NOT_ANCHORED;
}

/* prove_merge(commit_hash[32], proof_hash[32], n u8, weights[n] u64, remainder[64], proof[384]);
 * accounts: owner [s], repo, zkrvk, merge record [w], the n input records (the merge's parents, in
 * order) (+ the four NFT accounts). The owner (holder) proves that an anchored FedAvg merge rounded
 * to nearest: W = sum w_k, sum_k w_k C_k == W C(d) + C(r) with the record's C(d) (the merge rule),
 * and the remainder proof for C(r) with X = W (|2 r_i| <= W), bound to proof_hash (the owner's word,
 * as in prove_commit); sets FLAG_PROVEN. Idempotent: a record already PROVEN returns success. */
static uint64_t prove_merge(SolParameters *p) {
  if (p->data_len < 66) return E_INVALID_INSTRUCTION_DATA;
  uint64_t n = p->data[65], total;
  if (n == 0 || p->data_len != 514 + 8 * n) return E_INVALID_INSTRUCTION_DATA;
  if (n > MAX_PARENTS) return E_TOO_MANY_PARENTS;
  if (p->ka_num < 4 + n) return E_NOT_ENOUGH_ACCOUNTS;
  const uint8_t *hash = p->data + 1, *proof_hash = p->data + 33, *weights = p->data + 66;
  const uint8_t *remainder = weights + 8 * n, *proof = remainder + 64;
  if (!weight_total(weights, n, &total) || total == 0) return E_INVALID_INSTRUCTION_DATA;
  Ctl ctl = {NULL, NULL, 4 + n};
  uint64_t rc = control(p, false, &ctl);
  if (rc) return rc;
  const Repo *r = ctl.repo;
  if (!(r->flags & REPO_HAS_REMAINDER_KEY)) return E_NO_REMAINDER_KEY;
  const ZkVk *v = as_vk(&p->ka[2], p->program_id, r, TAG_ZKRVK);
  if (!v || !(v->flags & VK_SEALED)) return E_INVALID_VK_ACCOUNT;
  Commit *m = (Commit *)as_commit(&p->ka[3], p->program_id, r->repo_id, hash);
  if (!m) return E_COMMIT_NOT_ANCHORED;
  if (!p->ka[3].is_writable) return E_ACCOUNT_NOT_WRITABLE;
  if (m->kind != KIND_MERGE) return E_NOT_A_MERGE;
  if (!(m->flags & FLAG_HAS_COMMITMENT)) return E_MISSING_COMMITMENT;
  if (m->flags & FLAG_PROVEN) return 0;
  const Commit *in[MAX_PARENTS];
  rc = merge_inputs(p, m, n, in);
  if (rc) return rc;
  rc = check_merge_commitments(in, weights, n, m->commitment, remainder);
  if (rc) return rc;
  uint8_t w2[32]; /* X = W, big-endian, as the key's bound slot takes it */
  memset(w2, 0, 24);
  for (int i = 0; i < 8; i++) w2[31 - i] = (uint8_t)(total >> (8 * i));
  ZkStatement s = {v->vk, proof, remainder, proof_hash, w2};
  switch (zk_verify(&s)) {
  case ZK_OK: break;
  case ZK_BOUND: return E_MERGE_WEIGHT_TOO_LARGE; /* W >= 2^sb: past what the circuit takes */
  case ZK_LINK: return E_PROOF_LINK_FAILS;
  case ZK_GROTH16: return E_PROOF_GROTH16_FAILS;
  default: return E_INVALID_PROOF_POINT;
  }
  m->flags |= FLAG_PROVEN;
  return 0;
}

uint64_t entrypoint(const uint8_t *input) {
  SolAccountInfo accounts[MAX_ACCOUNTS];
  SolParameters p = {.ka = accounts};
  sol_deserialize(input, &p, MAX_ACCOUNTS);
  if (p.ka_num > MAX_ACCOUNTS) return E_TOO_MANY_ACCOUNTS;
  if (p.data_len == 0) return E_INVALID_INSTRUCTION;
  switch (p.data[0]) {
  case IX_CREATE_REPO: return create_repo(&p);
  case IX_ADD_MEMBER: return add_member(&p);
  case IX_REMOVE_MEMBER: return remove_member(&p);
  case IX_ANCHOR_COMMIT: return anchor_commit(&p);
  case IX_MERGE: return merge(&p);
  case IX_SET_HEAD: return set_head(&p);
  case IX_BIND_NFT: return bind_nft(&p);
  case IX_SYNC_HOLDER: return sync_holder(&p);
  case IX_SET_SHARE: return set_share(&p);
  case IX_SELL: return sell(&p);
  case IX_SET_URI: return set_uri(&p);
  case IX_CLAIM: return claim(&p);
  case IX_WRITE_VK: return write_key(&p, &UPDATE_KEY);
  case IX_SEAL_VK: return seal_key(&p, &UPDATE_KEY);
  case IX_PROVE_COMMIT: return prove_commit(&p);
  case IX_WRITE_RVK: return write_key(&p, &REMAINDER_KEY);
  case IX_SEAL_RVK: return seal_key(&p, &REMAINDER_KEY);
  case IX_PROVE_MERGE: return prove_merge(&p);
  default: return E_INVALID_INSTRUCTION;
  }
}
