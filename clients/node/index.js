'use strict';
/**
 * Node client of the lmforge trainer service. Loads protos/lmforge/v1/trainer.proto at run time with
 * @grpc/proto-loader (no generated code): field names are lowerCamelCase (baseModelId, afterSequence),
 * int64 values are strings, enums are their names ("JOB_STATE_SUCCEEDED"), and a oneof's set field is
 * named by its oneof (event.payload === "metrics" | "stateChange" | "checkpointSaved" | "log" | "rollouts" |
 * "resumed").
 *
 *   const { trainerClient } = require('@lmforge/client');
 *   const client = trainerClient('127.0.0.1:50051');
 *   client.GetJob({ jobId }, (err, job) => { ... });
 *
 * Calls fail with a grpc-js ServiceError (err.code is a grpc.status number, err.details the message).
 */
const path = require('path');
const grpc = require('@grpc/grpc-js');
const protoLoader = require('@grpc/proto-loader');

const PROTO_ROOT = path.resolve(__dirname, '..', '..', 'protos');
const TRAINER_PROTO = path.join(PROTO_ROOT, 'lmforge', 'v1', 'trainer.proto');

const LOADER_OPTIONS = {
  includeDirs: [PROTO_ROOT],
  keepCase: false,
  longs: String,
  enums: String,
  defaults: true,
  oneofs: true,
};

let cachedPackage = null;

/** The loaded `lmforge.v1` package object (message types and the TrainerService constructor). */
function loadPackage() {
  if (!cachedPackage) {
    const definition = protoLoader.loadSync(TRAINER_PROTO, LOADER_OPTIONS);
    cachedPackage = grpc.loadPackageDefinition(definition).lmforge.v1;
  }
  return cachedPackage;
}

/** A client interceptor adding `authorization: Bearer <key>` to every call (what the servers check). */
function bearerKey(apiKey) {
  return (options, nextCall) => new grpc.InterceptingCall(nextCall(options), {
    start(metadata, listener, next) {
      metadata.set('authorization', `Bearer ${apiKey}`);
      next(metadata, listener);
    },
  });
}

/**
 * A TrainerService client for `address` ("host:port"), over an insecure channel. `apiKey` (default
 * process.env.LMFORGE_API_KEY) is sent with every call once the server has keys (docs/security.md).
 * @param {string} [address="127.0.0.1:50051"]
 * @param {grpc.ChannelCredentials} [credentials]
 * @param {string} [apiKey]
 */
function trainerClient(address = '127.0.0.1:50051', credentials = grpc.credentials.createInsecure(),
  apiKey = process.env.LMFORGE_API_KEY || '') {
  const { TrainerService } = loadPackage();
  return new TrainerService(address, credentials, {
    'grpc.max_receive_message_length': 64 * 1024 * 1024,
    'grpc.max_send_message_length': 64 * 1024 * 1024,
    ...(apiKey ? { interceptors: [bearerKey(apiKey)] } : {}),
  });
}

// States a job stays in until someone acts: the three ends, and PAUSED (ResumeJob continues a PAUSED,
// FAILED or CANCELLED job as its next attempt: client.ResumeJob({ jobId }, cb); client.PauseJob likewise).
const TERMINAL_STATES = new Set(['JOB_STATE_SUCCEEDED', 'JOB_STATE_FAILED', 'JOB_STATE_CANCELLED', 'JOB_STATE_PAUSED']);

/** True for JOB_STATE_SUCCEEDED, JOB_STATE_FAILED, JOB_STATE_CANCELLED and JOB_STATE_PAUSED. */
function isTerminal(state) {
  return TERMINAL_STATES.has(state);
}

module.exports = { trainerClient, loadPackage, isTerminal, TERMINAL_STATES, PROTO_ROOT, grpc };
