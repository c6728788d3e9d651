// Shared driver for the client scripts in tests/clients/*/client.mjs. No npm dependencies.
//
// Each client script supplies an adapter:
//   mutate(name, inputType, input)  -> the CommandAccepted object (throws on any error)
//   history(traceId)                -> [TraceEvent] (throws on any error)
//   subscribe(traceId, {onReady, onEvent, onError}) -> unsubscribe function (may be async)
//   close()                         -> optional, async
// and this module does the env parsing, the scenario, the JSON-lines output and the exit codes.
// See tests/clients/README.md for the interface.
import { format } from 'node:util';

const out = (obj) => process.stdout.write(JSON.stringify(obj) + '\n');
const diag = (...a) => process.stderr.write(format(...a) + '\n');

// stdout carries JSON lines only: route every library console.log/info/debug to stderr.
console.log = console.info = console.debug = (...a) => diag(...a);

export { out, diag };

export const SUBSCRIPTION = `subscription OnTraceEvent($t: ID!) {
  onTraceEvent(traceId: $t) { traceId seq component status timestamp attempt message }
}`;

export const HISTORY = `query TraceEvents($t: ID!) {
  traceEvents(traceId: $t) { traceId seq component status }
}`;

export function mutationText(name, inputType) {
  return `mutation Command($input: ${inputType}!) {
  ${name}(input: $input) { traceId status acceptedAt }
}`;
}

const DEFAULT_INPUT = {
  customerId: 'customer-1',
  items: [{ sku: 'sku-1', quantity: 2, unitPriceCents: 1250 }],
};

export function readEnv() {
  const url = process.env.TETHER_URL || 'http://127.0.0.1:4567/graphql';
  let auth;
  try {
    auth = JSON.parse(process.env.TETHER_AUTH || '{"type":"API_KEY","apiKey":"da2-local"}');
  } catch (e) {
    throw new Error(`TETHER_AUTH is not JSON: ${e.message}`);
  }
  if (!['API_KEY', 'OPENID_CONNECT', 'AWS_LAMBDA'].includes(auth.type)) {
    throw new Error(`TETHER_AUTH.type must be API_KEY, OPENID_CONNECT or AWS_LAMBDA, got ${auth.type}`);
  }
  const scenario = process.env.TETHER_SCENARIO || 'follow';
  if (!['follow', 'subscribe-only'].includes(scenario)) throw new Error(`unknown TETHER_SCENARIO ${scenario}`);
  const mutation = process.env.TETHER_MUTATION || 'createOrder';
  const inputType = process.env.TETHER_INPUT_TYPE || mutation[0].toUpperCase() + mutation.slice(1) + 'Input';
  const input = process.env.TETHER_INPUT ? JSON.parse(process.env.TETHER_INPUT) : DEFAULT_INPUT;
  const untilRaw = process.env.TETHER_UNTIL ?? (scenario === 'follow' ? 'TransactionManager:SUCCESS' : '');
  const until = untilRaw.split(',').map((s) => s.trim()).filter(Boolean);
  const traceId = process.env.TETHER_TRACE_ID;
  if (scenario === 'subscribe-only' && !traceId) throw new Error('TETHER_TRACE_ID is required for subscribe-only');
  const timeoutMs = +(process.env.TETHER_TIMEOUT_MS || 20000);
  const region = process.env.TETHER_REGION || 'us-east-1';
  return { url, auth, scenario, mutation, inputType, input, until, traceId, timeoutMs, region };
}

// The credential as an HTTP / connectionParams header object.
export function authHeaders(auth) {
  if (auth.type === 'API_KEY') return { 'x-api-key': auth.apiKey };
  if (auth.type === 'OPENID_CONNECT') return { Authorization: auth.jwt };
  return { Authorization: auth.token };
}

// Self-signed TLS: unless TETHER_TLS_VERIFY=1, an https:// TETHER_URL turns certificate checks off
// for this process (fetch and ws both read NODE_TLS_REJECT_UNAUTHORIZED at connect time).
export function allowSelfSigned(url) {
  if (url.startsWith('https:') && process.env.TETHER_TLS_VERIFY !== '1') {
    process.env.NODE_TLS_REJECT_UNAUTHORIZED = '0'; // (Node warns about it once, on stderr)
  }
}

// ---------------------------------------------------------------------------------------------
// Errors as JSON. Libraries hand back Errors, ApolloErrors, CloseEvents, {errors:[...]} objects...

const KNOWN_PROPS = ['name', 'message', 'code', 'reason', 'wasClean', 'type', 'statusCode', 'status',
  'errorType', 'errorCode', 'errors', 'graphQLErrors', 'networkError', 'protocolErrors', 'clientErrors',
  'result', 'bodyText', 'data', 'path', 'locations', 'extensions', 'recoverySuggestion', 'cause',
  'originalError', '$metadata', '_response'];

function plain(v, depth, seen) {
  if (v === null || v === undefined) return v;
  if (typeof v === 'function' || typeof v === 'symbol') return undefined;
  if (typeof v === 'bigint') return String(v);
  if (typeof v !== 'object') return v;
  if (seen.has(v) || depth > 8) return '[repeated]';
  seen.add(v);
  if (Array.isArray(v)) return v.map((x) => plain(x, depth + 1, seen));
  if (typeof Response !== 'undefined' && v instanceof Response) return { status: v.status, statusText: v.statusText };
  const o = {};
  for (const k of new Set([...KNOWN_PROPS, ...Object.keys(v)])) {
    if (k === 'stack' || k === 'target' || k === 'response' || k === 'request') continue;
    let x;
    try { x = v[k]; } catch { continue; }
    const p = plain(x, depth + 1, seen);
    if (p !== undefined) o[k] = p;
  }
  return o;
}

function walk(v, f, seen = new Set()) {
  if (!v || typeof v !== 'object' || seen.has(v)) return;
  seen.add(v);
  f(v);
  for (const x of Array.isArray(v) ? v : Object.values(v)) walk(x, f, seen);
}

export function errorJson(e) {
  let j = (e && typeof e === 'object') ? plain(e, 0, new WeakSet()) : { message: String(e) };
  if (Array.isArray(j)) j = { errors: j }; // graphql-transport-ws `error` payload: GraphQLError[]
  // Hoist the first errorType / statusCode found anywhere, so a test can check one field.
  let errorType, statusCode;
  // Apollo 4's ServerError keeps the HTTP body as text: parse it so its errors[] are visible.
  walk(j, (o) => {
    // (Amplify's ApiError keeps it in _response.body as a string)
    for (const k of ['bodyText', 'body']) {
      if (typeof o[k] === 'string') { try { o.body = JSON.parse(o[k]); } catch { /* not JSON */ } }
    }
  });
  walk(j, (o) => {
    if (errorType === undefined && typeof o.errorType === 'string' && o.errorType) errorType = o.errorType;
    if (statusCode === undefined && typeof o.statusCode === 'number') statusCode = o.statusCode;
    // subscription-link / Amplify report a connection_error as "Connection failed: <errorType>" and an
    // `error` frame as "Connection failed: <JSON payload>".
    if (typeof o.message === 'string') {
      const m = o.message.match(/Connection failed: (\{.*\})\s*$/s);
      if (m) {
        try { o.parsed = JSON.parse(m[1]); } catch { /* not JSON */ }
        const t = o.parsed?.errors?.find?.((x) => x.errorType)?.errorType;
        if (errorType === undefined && t) errorType = t;
      }
      const w = o.message.match(/^(?:Connection failed: )?([A-Za-z]+(?:Exception|Error))$/);
      if (errorType === undefined && w) errorType = w[1];
    }
  });
  if (errorType !== undefined) j.errorType = errorType;
  if (statusCode !== undefined) j.statusCode = statusCode;
  return j;
}

// ---------------------------------------------------------------------------------------------
// WebSockets opened by a library, so that the exit can wait for the library's own close
// (the AppSync links close the socket about 1 s after the last subscription is stopped).

const sockets = new Set();
export function trackSockets(WS) {
  return class TrackedWebSocket extends WS {
    constructor(...args) {
      super(...args);
      sockets.add(this);
      this.addEventListener('close', (ev) => { sockets.delete(this); diag(`websocket closed: ${ev.code} ${ev.reason}`); });
    }
  };
}

async function socketsClosed(limitMs) {
  const end = Date.now() + limitMs;
  while (sockets.size > 0 && Date.now() < end) await new Promise((r) => setTimeout(r, 20));
}

// ---------------------------------------------------------------------------------------------

export async function run(makeAdapter) {
  let finished = false;
  let unsubscribe = null;
  let adapter = null;

  const finish = async (code, line) => {
    if (finished) return;
    finished = true;
    if (line) out(line);
    // Clean up, bounded: never let a library hang the exit.
    const cleanup = (async () => {
      try { if (unsubscribe) await unsubscribe(); } catch (e) { diag('unsubscribe failed:', e); }
      try { if (adapter?.close) await adapter.close(); } catch (e) { diag('close failed:', e); }
      // let the stop frame out, then wait (bounded) for the library to close its socket itself
      // (shorter after a timeout or an error: the run is over anyway)
      await new Promise((r) => setTimeout(r, 50));
      const linger = +(process.env.TETHER_LINGER_MS || 1500);
      await socketsClosed(code === 0 ? linger : Math.min(linger, 500));
    })();
    await Promise.race([cleanup, new Promise((r) => setTimeout(r, code === 0 ? 3000 : 1000))]);
    if (code === 0) out({ done: true });
    process.exit(code);
  };
  const fail = (e) => {
    diag('error:', e);
    return finish(3, { error: errorJson(e) });
  };
  process.on('unhandledRejection', fail);
  process.on('uncaughtException', fail);

  let env;
  try { env = readEnv(); } catch (e) { return fail(e); }
  allowSelfSigned(env.url);
  // (this timer also keeps the process alive until finish(), whatever handles the library holds)
  setTimeout(() => finish(2, { timeout: true }), env.timeoutMs);

  const seen = new Set();
  let historyPromise = null;
  let settled = false;
  const untilSeen = () => env.until.length > 0 && env.until.some((u) => seen.has(u));
  const maybeDone = async () => {
    if (settled || !untilSeen()) return;
    settled = true;
    if (historyPromise) await historyPromise.catch(() => {});
    finish(0);
  };
  const emit = (line) => { if (!finished) out(line); }; // nothing after timeout/error/done
  const note = (ev) => { if (ev && ev.component) seen.add(`${ev.component}:${ev.status}`); };

  try {
    adapter = await makeAdapter(env);
    let traceId = env.traceId;
    if (env.scenario === 'follow') {
      const accepted = await adapter.mutate(env.mutation, env.inputType, env.input);
      emit({ accepted });
      traceId = accepted.traceId;
    }
    const fetchHistory = () => {
      if (env.scenario !== 'follow' || historyPromise) return;
      historyPromise = (async () => {
        const h = await adapter.history(traceId);
        emit({ history: h });
        h.forEach(note);
      })();
      historyPromise.then(maybeDone, fail);
    };
    unsubscribe = await adapter.subscribe(traceId, {
      onReady: () => { emit({ ready: true }); fetchHistory(); },
      onEvent: (ev) => { emit({ event: ev }); note(ev); fetchHistory(); maybeDone(); },
      onError: fail,
    });
  } catch (e) {
    fail(e);
  }
}
