// DEVELOPMENT/TEST ONLY - NOT FOR PRODUCTION.
//
// A throwaway OpenID Provider for token-service development and tests, built on
// the real `oidc-provider` package so the tokens it issues are realistic.
// Everything here is deliberately insecure: fixed cookie keys, in-memory state,
// no passwords (anyone can log in as any configured user), plain http.
//
// Usage: node devidp/server.mjs CONFIG.json
// See devidp/harness.py for the CONFIG.json format and the Python driver.

import * as http from 'node:http';
import { readFileSync } from 'node:fs';

import Provider, { errors } from 'oidc-provider';

const DEFAULT_RESOURCE = 'urn:token-service:api';
const RESOURCE_SCOPE = 'openid email profile groups';
const TOKEN_TTL = 60 * 60; // ID and access tokens live one hour.
const MAX_FORM_BYTES = 16 * 1024;

// Fixed on purpose so sessions survive restarts in dev; never reuse this value.
const DEV_COOKIE_KEYS = ['devidp-insecure-cookie-key-DEVELOPMENT-ONLY'];

const DEFAULT_REDIRECT_URIS = [
  'http://127.0.0.1:8000/callback',
  'http://localhost:8000/callback',
];

/** Default public clients: one with RS256 ID tokens, one with ES256 ID tokens. */
function defaultClients() {
  const base = {
    token_endpoint_auth_method: 'none',
    grant_types: ['authorization_code', 'refresh_token'],
    response_types: ['code'],
    redirect_uris: DEFAULT_REDIRECT_URIS,
    post_logout_redirect_uris: ['http://127.0.0.1:8000/demo/', 'http://localhost:8000/demo/'],
    // `make run` signs browsers in through the service; the IdP tells it when a session ends.
    backchannel_logout_uri: 'http://127.0.0.1:8000/backchannel-logout',
    backchannel_logout_session_required: true,
  };
  return [
    { ...base, client_id: 'token-service-dev' },
    { ...base, client_id: 'token-service-es256', id_token_signed_response_alg: 'ES256' },
  ];
}

/** Reads and sanity-checks CONFIG.json; fails loudly because this runs from tests. */
function loadConfig(path) {
  const raw = JSON.parse(readFileSync(path, 'utf8'));
  const config = {
    port: raw.port,
    issuer: raw.issuer,
    keys: raw.keys,
    users: raw.users ?? {},
    // `extra_clients` adds to the defaults (e.g. a confidential client that introspects tokens).
    clients: [...(raw.clients ?? defaultClients()), ...(raw.extra_clients ?? [])],
    resource: raw.resource ?? DEFAULT_RESOURCE,
  };
  if (!Number.isInteger(config.port)) throw new Error('config.port must be an integer');
  if (typeof config.issuer !== 'string') throw new Error('config.issuer must be a string');
  if (!Array.isArray(config.keys) || config.keys.length === 0) {
    throw new Error('config.keys must be a non-empty array of private JWKs');
  }
  for (const key of config.keys) {
    if (!key.kid || !key.alg || !key.d) throw new Error('every key needs kid, alg and private part d');
  }
  return config;
}

function htmlEscape(value) {
  return String(value).replace(/[&<>"']/g, (c) => ({
    '&': '&amp;', '<': '&lt;', '>': '&gt;', '"': '&quot;', "'": '&#39;',
  })[c]);
}

/** Minimal login page; usable by a human in a browser and by the Python harness. */
function loginPage({ uid, clientId, users, error }) {
  const options = Object.keys(users)
    .map((u) => `<option value="${htmlEscape(u)}">${htmlEscape(u)}</option>`)
    .join('');
  const errorHtml = error ? `<p class="error" style="color:#b00">${htmlEscape(error)}</p>` : '';
  return `<!DOCTYPE html>
<html>
<head><meta charset="utf-8"><title>devidp login (DEVELOPMENT ONLY)</title></head>
<body style="font-family:sans-serif;max-width:30em;margin:2em auto">
  <h1>Development IdP</h1>
  <p><strong>NOT FOR PRODUCTION.</strong> No passwords: pick any test user.</p>
  <p>Client: <code>${htmlEscape(clientId)}</code></p>
  ${errorHtml}
  <form method="post" action="/interaction/${htmlEscape(uid)}/login">
    <label>User <select name="login" autofocus>${options}</select></label>
    <button type="submit">Sign in</button>
  </form>
</body>
</html>`;
}

/** Reads an application/x-www-form-urlencoded body without extra dependencies. */
async function readForm(req) {
  const chunks = [];
  let size = 0;
  for await (const chunk of req) {
    size += chunk.length;
    if (size > MAX_FORM_BYTES) throw new errors.InvalidRequest('form body too large');
    chunks.push(chunk);
  }
  return new URLSearchParams(Buffer.concat(chunks).toString('utf8'));
}

function buildProvider(config) {
  const { users, resource } = config;

  const configuration = {
    clients: config.clients,
    jwks: { keys: config.keys },
    cookies: { keys: DEV_COOKIE_KEYS },

    // Account lookup from the static user table; claims are filtered by the
    // provider according to the granted scopes.
    async findAccount(ctx, sub) {
      const claims = users[sub];
      if (!claims) return undefined;
      return {
        accountId: sub,
        async claims() {
          return { ...claims, sub };
        },
      };
    },

    claims: {
      openid: ['sub'],
      email: ['email', 'email_verified'],
      profile: ['name', 'family_name', 'given_name', 'preferred_username', 'picture', 'updated_at'],
      groups: ['groups'],
    },
    scopes: ['openid', 'offline_access'],

    // Put scope-granted claims into ID tokens even when an access token is also
    // issued (the default, true, would move them to userinfo only).
    conformIdTokenClaims: false,

    pkce: { required: () => true }, // oidc-provider 9 only supports S256.
    rotateRefreshToken: true,

    ttl: {
      AccessToken: TOKEN_TTL,
      IdToken: TOKEN_TTL,
      AuthorizationCode: 60,
      Interaction: 60 * 60,
      Session: 24 * 60 * 60,
      Grant: 24 * 60 * 60,
      RefreshToken: 24 * 60 * 60,
    },

    // Mirror the identity claims into JWT access tokens so the resource server
    // can authorize on them without a userinfo call. Gated by granted scope.
    async extraTokenClaims(ctx, token) {
      if (token.kind !== 'AccessToken' || !token.resourceServer) return undefined;
      const user = users[token.accountId];
      if (!user) return undefined;
      const scopes = new Set((token.scope || '').split(' '));
      const extra = {};
      if (scopes.has('email')) {
        if (user.email !== undefined) extra.email = user.email;
        if (user.email_verified !== undefined) extra.email_verified = user.email_verified;
      }
      if (scopes.has('groups') && user.groups !== undefined) extra.groups = user.groups;
      return extra;
    },

    // DEV ONLY: the relying parties of a development IdP listen on loopback, which oidc-provider's
    // SSRF guard refuses by default (back-channel logout would never arrive). Never in production.
    fetch: (url, options) => {
      const { dispatcher, ...rest } = options;
      return globalThis.fetch(url, rest);
    },

    features: {
      devInteractions: { enabled: false },
      // Opaque access tokens (a login without `resource`) are checked by RFC 7662 introspection,
      // which any authenticated (confidential) client may call, and by userinfo.
      introspection: {
        enabled: true,
        async allowedPolicy(ctx, client) {
          return client.clientAuthMethod !== 'none';
        },
      },
      revocation: {
        enabled: true,
        async allowedPolicy(ctx, client, token) {
          return token.clientId === client.clientId;
        },
      },
      backchannelLogout: { enabled: true },
      // Backends (a test's `extra_clients` with grant_types ['client_credentials']) get access
      // tokens for themselves: with `resource`, a JWT for the resource server (RFC 9068).
      clientCredentials: { enabled: true },
      rpInitiatedLogout: { enabled: true },
      resourceIndicators: {
        enabled: true,
        async defaultResource(ctx, client, oneOf) {
          return oneOf;
        },
        async useGrantedResource() {
          return false;
        },
        async getResourceServerInfo(ctx, indicator) {
          if (indicator !== resource) throw new errors.InvalidTarget();
          return {
            scope: RESOURCE_SCOPE,
            audience: resource,
            accessTokenTTL: TOKEN_TTL,
            accessTokenFormat: 'jwt',
            jwt: { sign: { alg: 'RS256' } },
          };
        },
      },
    },

    // Plain-text error page: no external assets, readable from scripts.
    async renderError(ctx, out) {
      ctx.type = 'text/plain';
      ctx.body = `${Object.entries(out).map(([k, v]) => `${k}: ${v}`).join('\n')}\n`;
    },

    interactions: {
      url(ctx, interaction) {
        return `/interaction/${interaction.uid}`;
      },
    },
  };

  const provider = new Provider(config.issuer, configuration);
  provider.proxy = false;
  return provider;
}

/** Grants everything the consent prompt says is missing (dev IdP: no consent UI). */
async function autoConsent(provider, details) {
  const { prompt: { details: missing }, params, session: { accountId } } = details;
  const grant = details.grantId
    ? await provider.Grant.find(details.grantId)
    : new provider.Grant({ accountId, clientId: params.client_id });

  if (missing.missingOIDCScope) grant.addOIDCScope(missing.missingOIDCScope.join(' '));
  if (missing.missingOIDCClaims) grant.addOIDCClaims(missing.missingOIDCClaims);
  if (missing.missingResourceScopes) {
    for (const [indicator, scopes] of Object.entries(missing.missingResourceScopes)) {
      grant.addResourceScope(indicator, scopes.join(' '));
    }
  }
  const grantId = await grant.save();
  return details.grantId ? { consent: {} } : { consent: { grantId } };
}

function installRoutes(provider, config, stats) {
  const jwksPath = '/jwks';

  // Request log: method, path (never the query string: it may carry codes) and status.
  provider.use(async (ctx, next) => {
    try {
      await next();
    } finally {
      console.log(`${ctx.method} ${ctx.path} ${ctx.status}`);
    }
  });

  provider.use(async (ctx, next) => {
    if (ctx.method === 'GET' && ctx.path === jwksPath) stats.jwks_requests += 1;
    if (ctx.method === 'POST' && ctx.path === '/token/introspection') stats.introspection_requests += 1;
    if (ctx.path === '/me') stats.userinfo_requests += 1;

    if (ctx.method === 'GET' && ctx.path === '/_devidp/stats') {
      ctx.body = { ...stats };
      return undefined;
    }

    const match = /^\/interaction\/([^/]+)(\/login)?$/.exec(ctx.path);
    if (!match) return next();
    const [, uid, isLogin] = match;

    ctx.set('cache-control', 'no-store');
    let details;
    try {
      details = await provider.interactionDetails(ctx.req, ctx.res);
      if (details.uid !== uid) throw new errors.SessionNotFound('interaction uid mismatch');
    } catch (err) {
      ctx.status = 400;
      ctx.type = 'text/plain';
      ctx.body = `interaction error: ${err.error_description || err.message}\n`;
      return undefined;
    }
    const clientId = details.params.client_id;

    if (!isLogin && ctx.method === 'GET') {
      if (details.prompt.name === 'login') {
        ctx.type = 'html';
        ctx.body = loginPage({ uid, clientId, users: config.users });
        return undefined;
      }
      if (details.prompt.name === 'consent') {
        const result = await autoConsent(provider, details);
        const returnTo = await provider.interactionResult(ctx.req, ctx.res, result, {
          mergeWithLastSubmission: true,
        });
        ctx.redirect(returnTo);
        ctx.status = 303;
        return undefined;
      }
      ctx.status = 400;
      ctx.body = `unsupported prompt ${details.prompt.name}\n`;
      return undefined;
    }

    if (isLogin && ctx.method === 'POST') {
      if (details.prompt.name !== 'login') {
        ctx.status = 400;
        ctx.body = 'interaction is not waiting for a login\n';
        return undefined;
      }
      const form = await readForm(ctx.req);
      const login = (form.get('login') || '').trim();
      if (!Object.hasOwn(config.users, login)) {
        ctx.status = 400;
        ctx.type = 'html';
        ctx.body = loginPage({
          uid, clientId, users: config.users, error: `unknown user ${JSON.stringify(login)}`,
        });
        return undefined;
      }
      const returnTo = await provider.interactionResult(ctx.req, ctx.res, {
        login: { accountId: login, amr: ['dev'] },
      }, { mergeWithLastSubmission: false });
      ctx.redirect(returnTo);
      ctx.status = 303;
      return undefined;
    }

    ctx.status = 405;
    ctx.body = 'method not allowed\n';
    return undefined;
  });
}

function banner(config) {
  const line = '='.repeat(60);
  console.log(line);
  console.log('DEVELOPMENT IDENTITY PROVIDER - NOT FOR PRODUCTION');
  console.log(`issuer: ${config.issuer}`);
  console.log(`users:  ${Object.keys(config.users).join(', ') || '(none)'}`);
  console.log(`clients: ${config.clients.map((c) => c.client_id).join(', ')}`);
  console.log(`resource: ${config.resource}`);
  console.log(line);
}

function main() {
  const configPath = process.argv[2];
  if (!configPath) {
    console.error('usage: node devidp/server.mjs CONFIG.json');
    process.exit(2);
  }
  const config = loadConfig(configPath);
  const stats = { jwks_requests: 0, introspection_requests: 0, userinfo_requests: 0 };
  const provider = buildProvider(config);
  installRoutes(provider, config, stats);

  // Surface provider-internal errors (without token material) for debugging.
  provider.on('server_error', (ctx, err) => console.error(`server_error: ${err.stack || err}`));
  // Back-channel logout notifications to relying parties: say whether each one got through.
  provider.on('backchannel.success', (ctx, client) => console.log(`backchannel logout -> ${client.clientId}: ok`));
  provider.on('backchannel.error', (ctx, err, client) => console.log(
    `backchannel logout -> ${client.clientId}: ${err.message}${err.cause ? ` (${err.cause.code || err.cause.message})` : ""}`));

  banner(config);
  const host = new URL(config.issuer).hostname;
  const server = http.createServer(provider.callback());
  server.listen(config.port, host, () => {
    console.log(`devidp ready ${config.issuer}`);
  });

  const shutdown = () => {
    server.close(() => process.exit(0));
    server.closeAllConnections(); // don't wait for idle keep-alive sockets
  };
  process.on('SIGTERM', shutdown);
  process.on('SIGINT', shutdown);
}

main();
