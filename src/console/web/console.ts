/**
 * The console's page script (served as /assets/console.js): what plain HTML forms cannot do. It keeps endpoint
 * states current without a reload (polling the console's state.json; the API has no change stream), wires the copy
 * buttons and confirmations, and draws the monitoring charts with uPlot. Every page works without it.
 */

interface EndpointState {
  endpointId: string;
  state: string;
  reason: string;
  since: string | null;
  compute: string;
  term: string;
}

const POLL_MS = 1000;

/** Polls each endpoint shown on the page and updates every element that shows one of its fields. */
function liveStates(): void {
  const ids = new Set<string>();
  document.querySelectorAll<HTMLElement>('[data-endpoint]').forEach((element) => ids.add(element.dataset.endpoint!));
  if (ids.size === 0) return;
  const update = async (id: string): Promise<void> => {
    try {
      const response = await fetch(`/endpoints/${id}/state.json`, { headers: { accept: 'application/json' }, credentials: 'same-origin' });
      if (response.status === 401) {
        location.assign('/signin');
        return;
      }
      if (!response.ok) return;
      const endpoint = (await response.json()) as EndpointState;
      document.querySelectorAll<HTMLElement>(`[data-endpoint="${id}"]`).forEach((element) => {
        const field = element.dataset.field;
        if (field === 'state') {
          if (element.textContent !== endpoint.state) {
            element.textContent = endpoint.state;
            element.className = `state state-${endpoint.state.toLowerCase()}`;
          }
        } else if (field === 'reason') element.textContent = endpoint.reason || '—';
        else if (field === 'since') element.textContent = endpoint.since ? endpoint.since.replace('T', ' ').replace(/\.\d+Z$/, ' UTC') : '—';
        else if (field === 'compute') element.textContent = endpoint.compute || '—';
        else if (field === 'term') element.textContent = endpoint.term;
      });
    } catch {
      // The console restarted or the network blinked: the next poll tries again.
    }
  };
  const tick = async (): Promise<void> => {
    if (!document.hidden) await Promise.all([...ids].map(update));
    setTimeout(() => void tick(), POLL_MS);
  };
  setTimeout(() => void tick(), POLL_MS);
}

function copyButtons(): void {
  document.querySelectorAll<HTMLButtonElement>('button[data-copy]').forEach((button) => {
    button.addEventListener('click', async () => {
      const source = document.getElementById(button.dataset.copy!) as HTMLInputElement | null;
      if (!source) return;
      try {
        await navigator.clipboard.writeText(source.value);
      } catch {
        // Without clipboard access (plain http on another host): select the text for Ctrl+C.
        source.select();
      }
      button.textContent = 'Copied';
      setTimeout(() => (button.textContent = 'Copy'), 2000);
    });
  });
}

function confirmations(): void {
  document.querySelectorAll<HTMLButtonElement>('button[data-confirm]').forEach((button) => {
    button.addEventListener('click', (event) => {
      if (!window.confirm(button.dataset.confirm!)) event.preventDefault();
    });
  });
}

interface ChartData {
  id: string;
  title: string;
  unit: string;
  labels: string[];
  timestamps: number[];
  values: (number | null)[][];
  limit: number | null;
}

interface UPlotInstance {
  destroy(): void;
}
type UPlotConstructor = new (options: object, data: (number | null)[][], target: HTMLElement) => UPlotInstance;

const COLORS = ['#2563eb', '#16a34a', '#d97706', '#9333ea'];

/** Axis labels short enough for the axis: bytes in binary units, other values with k/M. */
function formatValue(unit: string, value: number): string {
  const steps = unit === 'bytes' ? ['B', 'KiB', 'MiB', 'GiB', 'TiB'] : ['', 'k', 'M', 'G'];
  const base = unit === 'bytes' ? 1024 : 1000;
  let scaled = value;
  let index = 0;
  while (Math.abs(scaled) >= base && index < steps.length - 1) {
    scaled /= base;
    index += 1;
  }
  const precise = scaled.toPrecision(3);
  const text = Number.isInteger(scaled) ? String(scaled) : precise.includes('.') && !precise.includes('e') ? precise.replace(/0+$/, '').replace(/\.$/, '') : precise;
  return `${text}${unit === 'bytes' ? ` ${steps[index]}` : steps[index]}`;
}

function monitoring(): void {
  const container = document.querySelector<HTMLElement>('[data-monitoring]');
  const uPlot = (window as unknown as { uPlot?: UPlotConstructor }).uPlot;
  if (!container || !uPlot) return;
  const errorBox = document.querySelector<HTMLElement>('[data-monitoring-error]');
  const plots: UPlotInstance[] = [];
  const load = async (range: string): Promise<void> => {
    const response = await fetch(`/endpoints/${container.dataset.monitoring}/metrics.json?range=${encodeURIComponent(range)}`, { credentials: 'same-origin' });
    const body = (await response.json()) as { charts?: ChartData[]; error?: string };
    if (errorBox) {
      errorBox.hidden = response.ok;
      errorBox.textContent = response.ok ? '' : `Error: ${body.error ?? response.statusText}`;
    }
    if (!response.ok || !body.charts) return;
    plots.splice(0).forEach((plot) => plot.destroy());
    for (const chart of body.charts) {
      const target = container.querySelector<HTMLElement>(`[data-chart="${chart.id}"] .plot`);
      if (!target) continue;
      target.textContent = '';
      const empty = chart.values.every((series) => series.every((value) => value === null));
      if (empty) {
        target.textContent = 'No data for this range yet.';
        continue;
      }
      const series: object[] = [{}, ...chart.labels.map((label, index) => ({ label, stroke: COLORS[index % COLORS.length], width: 2 }))];
      const data: (number | null)[][] = [chart.timestamps, ...chart.values];
      if (chart.limit !== null) {
        series.push({ label: 'limit', stroke: '#dc2626', dash: [6, 4], width: 1 });
        data.push(chart.timestamps.map(() => chart.limit));
      }
      const width = Math.max(260, target.clientWidth || 600);
      plots.push(new uPlot({ width, height: 200, series, axes: [{}, { size: 70, values: (_plot: unknown, splits: number[]) => splits.map((split) => formatValue(chart.unit, split)) }], legend: { live: false } }, data, target));
    }
  };
  document.querySelectorAll<HTMLInputElement>('input[data-range]').forEach((input) => input.addEventListener('change', () => void load(input.value)));
  void load(document.querySelector<HTMLInputElement>('input[data-range]:checked')?.value ?? '1h');
}

liveStates();
copyButtons();
confirmations();
monitoring();
