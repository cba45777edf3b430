/**
 * Monitoring per endpoint: a fixed set of PromQL queries, each filtered to one endpoint id that the user's own key has
 * just been shown to reach (GetEndpoint), run against the platform's Prometheus by the console server. The browser
 * never talks to Prometheus and never sends a query: it names a chart range, nothing else, so a user sees only their
 * tenant's series. Charts are drawn by uPlot in the page script.
 */
import type { Endpoint } from './platform-api.js';
import { html, raw } from './html.js';
import { layout, type PageContext } from './views.js';

export const RANGES = { '15m': 15 * 60, '1h': 3600, '6h': 6 * 3600, '24h': 24 * 3600, '7d': 7 * 24 * 3600 } as const;

/** One chart: its series, each a query with `$endpoint` standing for the endpoint id (a label value). */
interface Chart {
  id: string;
  title: string;
  unit: string;
  series: { label: string; query: string }[];
  /** A horizontal line from the endpoint's profile (e.g. its CPU or memory limit). */
  limit?: (endpoint: Endpoint) => number | undefined;
}

/**
 * The platform's series per endpoint: labelled `endpoint` (and `tenant`, `project`, `branch`) by the compute's scrape
 * target, `timeline` for the pageserver; `spg99:*` are the recording rules of deploy/prometheus/. `$endpoint` and
 * `$timeline` stand for the endpoint's id and its branch's timeline id.
 */
export const CHARTS: Chart[] = [
  // Postgres' CPU and memory are not exported as metrics yet (the agent reports them to the control plane only).
  { id: 'cpu', title: 'CPU', unit: 'cores', series: [{ label: 'used', query: 'sum(rate(spg99_compute_cpu_seconds_total{endpoint="$endpoint"}[1m]))' }], limit: (endpoint) => (endpoint.currentProfile?.cpuMillis ?? endpoint.settings?.profile?.cpuMillis ?? 0) / 1000 || undefined },
  { id: 'memory', title: 'Memory', unit: 'bytes', series: [{ label: 'resident', query: 'sum(spg99_compute_memory_bytes{endpoint="$endpoint"})' }], limit: (endpoint) => (endpoint.currentProfile?.memoryMib ?? endpoint.settings?.profile?.memoryMib ?? 0) * 1024 * 1024 || undefined },
  {
    id: 'connections',
    title: 'Connections',
    unit: 'connections',
    series: [
      { label: 'active', query: 'sum(spg99_pg_connections{endpoint="$endpoint",state="active"})' },
      { label: 'idle', query: 'sum(spg99_pg_connections{endpoint="$endpoint",state="idle"})' },
      { label: 'max', query: 'max(spg99_pg_max_connections{endpoint="$endpoint"})' },
    ],
  },
  { id: 'tps', title: 'Transactions per second', unit: 'tx/s', series: [{ label: 'commits', query: 'sum(rate(spg99_pg_transactions_total{endpoint="$endpoint",outcome="commit"}[1m]))' }] },
  { id: 'commit-latency', title: 'Commit latency (p99, quorum)', unit: 'seconds', series: [{ label: 'p99', query: 'max(spg99:commit_delay_seconds:p99{endpoint="$endpoint"})' }] },
  { id: 'size', title: 'Database size', unit: 'bytes', series: [{ label: 'size', query: 'sum(spg99_pg_database_size_bytes{endpoint="$endpoint"})' }] },
  { id: 'cold-start', title: 'Cold start', unit: 'seconds', series: [{ label: 'start', query: 'sum(spg99_compute_start_phase_seconds{endpoint="$endpoint"})' }] },
  {
    id: 'lag',
    title: 'WAL and pageserver lag',
    unit: 'bytes',
    series: [
      { label: 'safekeepers', query: 'max(spg99_walproposer_safekeeper_lag_bytes{endpoint="$endpoint"})' },
      { label: 'pageserver', query: 'max(spg99:pageserver_ingest_lag_bytes{timeline="$timeline"})' },
    ],
  },
];

export interface ChartData {
  id: string;
  title: string;
  unit: string;
  labels: string[];
  /** Seconds since epoch, then one array per series (null where Prometheus has no sample). */
  timestamps: number[];
  values: (number | null)[][];
  limit: number | null;
}

/** Prometheus' HTTP API, queried by the console server. */
export class MonitoringSource {
  constructor(
    readonly prometheusUrl: string,
    private readonly timeoutMs = 10_000,
  ) {}

  async query(endpoint: Endpoint, range: keyof typeof RANGES): Promise<{ range: string; charts: ChartData[] }> {
    const end = Math.floor(Date.now() / 1000);
    const seconds = RANGES[range];
    const start = end - seconds;
    // About 240 points per chart whatever the range.
    const step = Math.max(15, Math.floor(seconds / 240));
    const timestamps: number[] = [];
    for (let time = start; time <= end; time += step) timestamps.push(time);
    const charts = await Promise.all(
      CHARTS.map(async (chart) => {
        const values = await Promise.all(
          chart.series.map(async (series) => {
            // The ids are the API's own (checked by GetEndpoint) and made of [a-z0-9-]: nothing to escape.
            const query = series.query.replaceAll('$endpoint', endpoint.endpointId).replaceAll('$timeline', endpoint.branchId);
            const points = await this.rangeQuery(query, start, end, step);
            return timestamps.map((time) => points.get(time) ?? null);
          }),
        );
        return { id: chart.id, title: chart.title, unit: chart.unit, labels: chart.series.map((series) => series.label), timestamps, values, limit: chart.limit?.(endpoint) ?? null };
      }),
    );
    return { range, charts };
  }

  private async rangeQuery(query: string, start: number, end: number, step: number): Promise<Map<number, number>> {
    const url = new URL('/api/v1/query_range', this.prometheusUrl);
    url.search = new URLSearchParams({ query, start: String(start), end: String(end), step: String(step) }).toString();
    const response = await fetch(url, { signal: AbortSignal.timeout(this.timeoutMs) }).catch((error: Error) => {
      throw new Error(`Prometheus at ${this.prometheusUrl} does not answer (${error.message}); is it running? (make status)`);
    });
    const body = (await response.json().catch(() => null)) as { status?: string; error?: string; data?: { result?: { values?: [number, string][] }[] } } | null;
    if (!response.ok || body?.status !== 'success') throw new Error(`Prometheus refused a query (${body?.error ?? `HTTP ${response.status}`})`);
    const points = new Map<number, number>();
    for (const [time, value] of body.data?.result?.[0]?.values ?? []) {
      const number = Number(value);
      if (Number.isFinite(number)) points.set(Math.round(time), number);
    }
    return points;
  }
}

export function monitoringPage(context: PageContext, endpoint: Endpoint, source: MonitoringSource | null): string {
  const id = endpoint.endpointId;
  return layout(
    context,
    `Monitoring ${id}`,
    html`<p class="crumbs"><a href="/">Projects</a> / <a href="/projects/${endpoint.projectId}">project</a> / <a href="/endpoints/${id}">${id}</a> /</p>
<h1>Monitoring <span class="mono">${id}</span></h1>
${
  source === null
    ? html`<p class="empty" role="status">Monitoring is off: this console has no Prometheus to read. Start the console with
<code>--prometheus-url http://127.0.0.1:9090</code> (the platform's Prometheus; <code>make up</code> passes it when it runs one), then reload.</p>`
    : html`<form class="row" role="group" aria-label="Time range">${Object.keys(RANGES).map(
        (range) => html`<label><input type="radio" name="range" value="${range}" ${range === '1h' ? raw('checked') : ''} data-range> ${range}</label>`,
      )}</form>
<p class="error" role="alert" hidden data-monitoring-error></p>
<div class="charts" data-monitoring="${id}">${CHARTS.map((chart) => html`<figure class="chart" data-chart="${chart.id}"><figcaption>${chart.title} <span class="muted">(${chart.unit})</span></figcaption><div class="plot" role="img" aria-label="${chart.title} over time"></div></figure>`)}</div>
<link rel="stylesheet" href="/assets/uplot.css"><script src="/assets/uplot.js"></script>`
}`,
  );
}
