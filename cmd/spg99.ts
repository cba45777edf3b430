#!/usr/bin/env node
/**
 * `spg99`, the command line of the public API (projects, branches, endpoints, roles, API keys): see docs/cli.md.
 */
import { runCliProcess } from '../src/cli/main.js';

await runCliProcess();
