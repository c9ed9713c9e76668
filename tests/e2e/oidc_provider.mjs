// A real OpenID Connect provider for the sign-on tests: node-oidc-provider (tools/browser, `make npm-tools`)
// with one confidential client (the node), test accounts with claims, its development login pages
// (devInteractions: any password), and consent given automatically. Prints {"issuer": URL} once listening.
//   node tests/e2e/oidc_provider.mjs --client-id meshnode --secret S --redirect http://127.0.0.1:P/ui/oidc/callback
import { createRequire } from "node:module";
import path from "node:path";
import { fileURLToPath } from "node:url";

const here = path.dirname(fileURLToPath(import.meta.url));
const require = createRequire(path.join(here, "..", "..", "tools", "browser", "package.json"));
const { default: Provider } = await import(require.resolve("oidc-provider"));

const args = Object.fromEntries(process.argv.slice(2).reduce((pairs, a, i, all) =>
  (a.startsWith("--") ? [...pairs, [a.slice(2), all[i + 1]]] : pairs), []));

const ACCOUNTS = {
  "dr.jones": { name: "Dr Alex Jones", email: "alex.jones@example.nhs.uk", email_verified: true,
    roles: ["imaging-clinicians"] },
  "pacs.lead": { name: "Sam Patel", email: "sam.patel@example.nhs.uk", email_verified: true,
    roles: ["mesh-admins", "imaging-pacs"] },
  "visitor": { name: "No Roles", email: "visitor@example.nhs.uk", roles: ["canteen"] },
  // another identity (sub) the provider gives dr.jones's user name, with an email address it has not verified
  "impostor": { preferred_username: "dr.jones", name: "Not Jones", email: "alex.jones@example.nhs.uk",
    email_verified: false, roles: ["mesh-admins"] },
};

const server = (await import("node:http")).createServer();
await new Promise((resolve) => server.listen(Number(args.port || 0), "127.0.0.1", resolve));
const issuer = `http://127.0.0.1:${server.address().port}`;

const provider = new Provider(issuer, {
  clients: [{
    client_id: args["client-id"] || "meshnode",
    client_secret: args.secret,
    redirect_uris: [args.redirect],
    grant_types: ["authorization_code"],
    response_types: ["code"],
    token_endpoint_auth_method: "client_secret_basic",
  }],
  claims: { openid: ["sub"], profile: ["preferred_username", "name"], email: ["email", "email_verified"], roles: ["roles"] },
  scopes: ["openid", "profile", "email", "roles"],
  conformIdTokenClaims: false,
  pkce: { required: () => true },
  features: { devInteractions: { enabled: true } },
  cookies: { keys: ["test-provider-cookie-key-0123456789"] },
  async findAccount(ctx, id) {
    const account = ACCOUNTS[id];
    if (!account) return undefined;
    return {
      accountId: id,
      async claims() { return { sub: id, preferred_username: id, ...account }; },
    };
  },
  async loadExistingGrant(ctx) {
    const grantId = ctx.oidc.result?.consent?.grantId || ctx.oidc.session.grantIdFor(ctx.oidc.client.clientId);
    if (grantId) return ctx.oidc.provider.Grant.find(grantId);
    // consent given automatically: the node is the trust's own application
    const grant = new ctx.oidc.provider.Grant({ clientId: ctx.oidc.client.clientId, accountId: ctx.oidc.session.accountId });
    grant.addOIDCScope("openid profile email roles");
    await grant.save();
    return grant;
  },
});
server.on("request", provider.callback());
process.stdout.write(JSON.stringify({ issuer }) + "\n");
process.on("SIGTERM", () => process.exit(0));
