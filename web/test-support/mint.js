// Token minting for the tests (docs/protocol.md, "Auth tokens"). A web page never mints: its
// server hands it a token.

import { createHmac } from "node:crypto";

const b64 = (/** @type {string | Buffer} */ s) => Buffer.from(s).toString("base64url");

/** @param {string} secret @param {string} head */
function sign(secret, head) {
  const mac = createHmac("sha256", secret).update("tether-token\0").update(head).digest();
  return `${head}.${b64(mac)}`;
}

/** A client token for `user` on `device`, valid until `expiry` (seconds since the epoch). */
export function mintClient(/** @type {string} */ secret, /** @type {string} */ user, /** @type {string} */ device, /** @type {number} */ expiry) {
  return sign(secret, `c1.${expiry}.${b64(user)}.${b64(device)}`);
}

/** A backend token for `service`. */
export function mintBackend(/** @type {string} */ secret, /** @type {string} */ service, /** @type {number} */ expiry) {
  return sign(secret, `b1.${expiry}.${b64(service)}`);
}
