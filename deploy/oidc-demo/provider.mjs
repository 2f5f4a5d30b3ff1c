// DEMO ONLY: a local OpenID provider for `make run` and the browser tests (never production).
// oidc-provider (the certified OpenID provider for Node) with its development login page: any
// password is accepted for the users listed in the config; keys are generated at each start;
// sessions and grants live in memory. Usage: node provider.mjs CONFIG.json
// CONFIG: {"issuer", "port", "clients": [client metadata], "users": {"alice": ["hr_officer"]},
//          "roles_claim": "roles", "ttl": {"IdToken": 3600, ...},
//          "refresh_tokens": "always" (default: to every client allowed the grant) or "spec"
//          (oidc-provider's own rule, OIDC Core §11: only for offline_access with prompt=consent),
//          "end_session": false (no RP-initiated logout, none advertised; default true)}
import { generateKeyPairSync, randomBytes } from 'node:crypto';
import { readFileSync } from 'node:fs';
import Provider from 'oidc-provider';

const config = JSON.parse(readFileSync(process.argv[2], 'utf8'));
// Users are read at each sign-in and refresh, so a test (or a demo) can change a job function.
const users = () => JSON.parse(readFileSync(process.argv[2], 'utf8')).users || {};
const rolesClaim = config.roles_claim || 'roles';
const key = generateKeyPairSync('rsa', { modulusLength: 2048 }).privateKey.export({ format: 'jwk' });
key.kid = `demo-${randomBytes(4).toString('hex')}`;
key.alg = 'RS256';
key.use = 'sig';

const provider = new Provider(config.issuer, {
  clients: config.clients,
  jwks: { keys: [key] },
  cookies: { keys: [randomBytes(16).toString('hex')] },
  pkce: { required: () => true },
  claims: { openid: ['sub', rolesClaim] },
  conformIdTokenClaims: false, // the job functions go into the ID token, as the gateway expects
  features: {
    devInteractions: { enabled: true }, // the development login page: DEMO ONLY
    rpInitiatedLogout: { enabled: config.end_session !== false },
    revocation: { enabled: true },
  },
  ttl: { IdToken: 3600, AccessToken: 3600, RefreshToken: 86400, ...(config.ttl || {}) },
  ...(config.refresh_tokens === 'spec'
    ? {}
    : { issueRefreshToken: async (ctx, client) => client.grantTypeAllowed('refresh_token') }),
  async findAccount(ctx, id) {
    if (!Object.hasOwn(users(), id)) return undefined; // unknown users cannot sign in
    return {
      accountId: id,
      async claims() {
        return { sub: id, [rolesClaim]: users()[id] };
      },
    };
  },
});
provider.proxy = false;
const server = provider.listen(config.port, '127.0.0.1', () => {
  console.log(`DEMO ONLY OpenID provider on ${config.issuer}`);
});
const stop = () => server.close(() => process.exit(0));
process.on('SIGTERM', stop);
process.on('SIGINT', stop);
