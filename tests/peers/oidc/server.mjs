// gocred's test identity provider: the real `oidc-provider` (npm), configured as an SSO
// provider for people: device flow (RFC 8628), authorization code + PKCE for a native public
// client with loopback redirects on any port (RFC 8252), refresh tokens, ID tokens carrying
// `groups`. Its built-in dev login pages accept any password; tests/peers/oidc/approve.py plays
// the user. Run from a directory whose node_modules has oidc-provider (the harness copies it
// into .peers/node).
//
//   PORT=18500 node server.mjs            -> issuer http://127.0.0.1:18500
import Provider from 'oidc-provider';

const port = Number(process.env.PORT || 18500);
const issuer = process.env.ISSUER || `http://127.0.0.1:${port}`;
const idTokenTtl = Number(process.env.ID_TOKEN_TTL || 600);

const provider = new Provider(issuer, {
  clients: [{
    client_id: 'gocred-cli',
    token_endpoint_auth_method: 'none',
    application_type: 'native',
    grant_types: ['urn:ietf:params:oauth:grant-type:device_code', 'authorization_code', 'refresh_token'],
    response_types: ['code'],
    redirect_uris: ['http://127.0.0.1/callback'],
  }],
  features: {
    devInteractions: { enabled: true },
    deviceFlow: { enabled: true },
    revocation: { enabled: true },
  },
  pkce: { required: () => true },
  scopes: ['openid', 'email', 'groups', 'offline_access'],
  claims: { openid: ['sub'], email: ['email', 'email_verified'], groups: ['groups'] },
  findAccount: async (ctx, id) => ({
    accountId: id,
    claims: async () => ({
      sub: id,
      email: `${id}@example.test`,
      email_verified: true,
      groups: id === 'mallory' ? [] : ['developers'],
    }),
  }),
  conformIdTokenClaims: false,
  issueRefreshToken: async (ctx, client, code) => client.grantTypeAllowed('refresh_token'),
  ttl: { IdToken: idTokenTtl, AccessToken: 600, DeviceCode: 600, RefreshToken: 86400 },
});
provider.on('server_error', (ctx, err) => console.error('server_error', err));
provider.listen(port, '127.0.0.1', () => console.log(`oidc-provider listening on ${issuer}`));
