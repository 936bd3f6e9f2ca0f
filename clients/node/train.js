#!/usr/bin/env node
'use strict';
/**
 * Start an SFT job on the lmforge trainer and follow it, printing one JSON line per event to stdout.
 *
 *   node clients/node/train.js --address 127.0.0.1:50051 --base-model ID --dataset ID \
 *       [--max-steps N] [--adapter lora|qlora|full] [--rank R] [--batch-size B] [--max-seq-length L] [--name N]
 *
 * Each stdout line is {"sequence", "kind": "metrics"|"state"|"checkpoint"|"log", "step", "time", ...};
 * sequences are strictly increasing. If the stream breaks (server restart, network) it reconnects
 * from the last sequence seen for up to 30 s. Job id and outcome go to stderr.
 * Exit code: 0 when the job ends SUCCEEDED, 1 when it ends FAILED/CANCELLED, 2 on usage or gRPC errors.
 */
const crypto = require('crypto');
const { parseArgs } = require('util');
const { trainerClient, isTerminal, grpc } = require('./index.js');

const USAGE =
  'usage: node train.js --address HOST:PORT --base-model ID --dataset ID [--max-steps N] ' +
  '[--adapter lora|qlora|full] [--rank R] [--batch-size B] [--max-seq-length L] [--name NAME]';
const ADAPTERS = { lora: 'ADAPTER_LORA', qlora: 'ADAPTER_QLORA', full: 'ADAPTER_FULL' };
const RECONNECT_WINDOW_MS = 30000;
// grpc-js reports a server that went away mid-stream as UNAVAILABLE or, when the HTTP/2 session dies under
// an open stream, as INTERNAL "Received RST_STREAM ... Session closed": both mean "reconnect and resume".
function isTransient(err) {
  if (err.code === grpc.status.UNAVAILABLE) return true;
  return err.code === grpc.status.INTERNAL && /RST_STREAM|Session closed|ECONNRESET|GOAWAY/.test(err.details || '');
}

function fail(message, code = 2) {
  process.stderr.write(`error: ${message}\n`);
  process.exitCode = code;
}

function statusName(code) {
  return Object.keys(grpc.status).find((k) => grpc.status[k] === code) || String(code);
}

function rpcErrorMessage(err) {
  return `${statusName(err.code)}: ${err.details || err.message}`;
}

function shortState(state) {
  return String(state).replace(/^JOB_STATE_/, '');
}

function isoTime(ts) {
  if (!ts || (Number(ts.seconds) === 0 && !ts.nanos)) return null;
  return new Date(Number(ts.seconds) * 1000 + Math.floor((ts.nanos || 0) / 1e6)).toISOString();
}

/** One TrainingEvent (proto-loader object) -> the plain object printed as a JSON line. */
function eventToJson(ev) {
  const base = { sequence: Number(ev.sequence), step: Number(ev.step), time: isoTime(ev.time) };
  switch (ev.payload) {
    case 'metrics':
      return {
        ...base,
        kind: 'metrics',
        phase: ev.metrics.phase,
        total_steps: Number(ev.metrics.totalSteps),
        values: ev.metrics.values,
      };
    case 'stateChange': {
      const sc = ev.stateChange;
      const out = { ...base, kind: 'state', state: shortState(sc.state), message: sc.message };
      if (sc.error && (sc.error.code || sc.error.message)) {
        out.error = {
          code: sc.error.code,
          message: sc.error.message,
          violations: (sc.error.violations || []).map((v) => ({
            row: Number(v.row), field: v.field, reason: v.reason, hint: v.hint,
          })),
        };
      }
      return out;
    }
    case 'checkpointSaved': {
      const c = ev.checkpointSaved.checkpoint || {};
      return {
        ...base,
        kind: 'checkpoint',
        checkpoint_id: c.id,
        checkpoint_kind: c.kind,
        base_model_id: c.baseModelId,
        is_final: Boolean(c.isFinal),
      };
    }
    case 'log':
      return { ...base, kind: 'log', level: ev.log.level, message: ev.log.message };
    default:
      return { ...base, kind: 'unknown' };
  }
}

function parse(argv) {
  const { values } = parseArgs({
    args: argv,
    options: {
      address: { type: 'string', default: process.env.LMFORGE_TRAINER_ADDRESS || '127.0.0.1:50051' },
      'base-model': { type: 'string' },
      dataset: { type: 'string' },
      'max-steps': { type: 'string' },
      adapter: { type: 'string', default: 'lora' },
      rank: { type: 'string' },
      'batch-size': { type: 'string' },
      'max-seq-length': { type: 'string' },
      name: { type: 'string' },
      help: { type: 'boolean', short: 'h' },
    },
  });
  return values;
}

function positiveInt(flag, text) {
  if (text === undefined) return undefined;
  if (!/^\d+$/.test(text) || Number(text) <= 0) throw new Error(`--${flag} must be a positive integer, got ${text}`);
  return Number(text);
}

function buildRequest(opts) {
  if (!opts['base-model'] || !opts.dataset) throw new Error('--base-model and --dataset are required');
  const adapterType = ADAPTERS[opts.adapter];
  if (!adapterType) throw new Error(`--adapter must be one of ${Object.keys(ADAPTERS).join(', ')}`);
  const hyperparameters = {};
  const maxSteps = positiveInt('max-steps', opts['max-steps']);
  if (maxSteps !== undefined) hyperparameters.maxSteps = String(maxSteps);
  const batchSize = positiveInt('batch-size', opts['batch-size']);
  if (batchSize !== undefined) hyperparameters.batchSize = batchSize;
  const maxSeq = positiveInt('max-seq-length', opts['max-seq-length']);
  if (maxSeq !== undefined) hyperparameters.maxSeqLength = maxSeq;
  const adapter = { type: adapterType };
  const rank = positiveInt('rank', opts.rank);
  if (rank !== undefined) adapter.rank = rank;
  return {
    requestId: crypto.randomUUID().replace(/-/g, ''), // idempotency key: a retried call returns the same job
    displayName: opts.name || '',
    baseModelId: opts['base-model'],
    datasetId: opts.dataset,
    sft: {},
    adapter,
    hyperparameters,
  };
}

/** Follow a job's events until its terminal state; resolves with the final Job. */
function follow(client, jobId, onEvent) {
  return new Promise((resolve, reject) => {
    let last = 0;
    let giveUpAt = null;
    let delay = 200;
    let current = null;
    process.once('SIGINT', () => {
      if (current) current.cancel();
      process.exit(130);
    });

    const retry = (err) => {
      const now = Date.now();
      if (giveUpAt === null) giveUpAt = now + RECONNECT_WINDOW_MS;
      if (now >= giveUpAt) return reject(err);
      setTimeout(connect, Math.min(delay, giveUpAt - now));
      delay = Math.min(delay * 2, 5000);
      return undefined;
    };

    const finish = () => {
      client.GetJob({ jobId }, (err, job) => {
        if (err) return isTransient(err) ? retry(err) : reject(err);
        // A follow stream ends after the terminal state; if it ended early (graceful server stop), resume.
        if (isTerminal(job.state) && Number(job.lastSequence) <= last) return resolve(job);
        return retry(new Error(`stream of job ${jobId} ended before the job finished (last sequence ${last})`));
      });
    };

    function connect() {
      let failed = false;
      const call = client.StreamMetrics({ jobId, afterSequence: String(last), follow: true });
      current = call;
      call.on('data', (ev) => {
        const seq = Number(ev.sequence);
        if (seq <= last) return; // already printed before a reconnect
        last = seq;
        giveUpAt = null;
        delay = 200;
        onEvent(ev);
      });
      call.on('error', (err) => {
        failed = true;
        if (isTransient(err)) retry(err);
        else reject(err);
      });
      call.on('end', () => {
        if (!failed) finish();
      });
    }
    connect();
  });
}

async function main(argv) {
  let opts;
  let request;
  try {
    opts = parse(argv);
    if (opts.help) {
      process.stdout.write(`${USAGE}\n`);
      return;
    }
    request = buildRequest(opts);
  } catch (err) {
    fail(`${err.message}\n${USAGE}`);
    return;
  }

  const client = trainerClient(opts.address);
  try {
    const deadline = Date.now() + 30000;
    const job = await new Promise((resolve, reject) =>
      client.StartTraining(request, { deadline }, (err, res) => (err ? reject(err) : resolve(res))));
    process.stderr.write(`job ${job.id}\n`);
    const final = await follow(client, job.id, (ev) => process.stdout.write(`${JSON.stringify(eventToJson(ev))}\n`));
    const state = shortState(final.state);
    let summary = `final state: ${state}`;
    if (final.resultCheckpointId) summary += `\nresult checkpoint: ${final.resultCheckpointId}`;
    if (final.error && final.error.message) summary += `\nerror: ${final.error.code}: ${final.error.message}`;
    process.stderr.write(`${summary}\n`);
    process.exitCode = state === 'SUCCEEDED' ? 0 : 1;
  } catch (err) {
    fail(err.code !== undefined ? rpcErrorMessage(err) : err.message);
  } finally {
    client.close();
  }
}

if (require.main === module) {
  main(process.argv.slice(2));
}

module.exports = { eventToJson, buildRequest };
