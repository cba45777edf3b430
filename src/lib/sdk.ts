/**
 * The one door from the platform's own code to `@spg99/sdk` (sdk/): the CLI and the console make every call to the
 * public API through the SDK, the same client services embed, so there is one connection, retry and error model.
 * The SDK depends on nothing of the platform's; the platform's parts reach it only through this module.
 */
export * from '../../sdk/src/index.js';
