// Test doubles for the browser's EventSource and fetch.
import { vi } from 'vitest';

type Listener = (event: MessageEvent<string> | Event) => void;

/** A controllable EventSource: tests open it, send events and break it. */
export class FakeEventSource {
  static readonly CONNECTING = 0;
  static readonly OPEN = 1;
  static readonly CLOSED = 2;
  static instances: FakeEventSource[] = [];

  readonly url: string;
  readyState = FakeEventSource.CONNECTING;
  private listeners = new Map<string, Listener[]>();

  constructor(url: string) {
    this.url = url;
    FakeEventSource.instances.push(this);
  }

  static latest(): FakeEventSource {
    const es = FakeEventSource.instances.at(-1);
    if (!es) throw new Error('no EventSource was opened');
    return es;
  }

  static reset() {
    FakeEventSource.instances = [];
  }

  addEventListener(type: string, listener: Listener) {
    this.listeners.set(type, [...(this.listeners.get(type) ?? []), listener]);
  }

  removeEventListener(type: string, listener: Listener) {
    this.listeners.set(
      type,
      (this.listeners.get(type) ?? []).filter((l) => l !== listener),
    );
  }

  close() {
    this.readyState = FakeEventSource.CLOSED;
  }

  /** The server answered: the stream is open. */
  open() {
    this.readyState = FakeEventSource.OPEN;
    this.fire('open', new Event('open'));
  }

  /** A named server-sent event with JSON data. */
  send(type: string, data: unknown) {
    const text = typeof data === 'string' ? data : JSON.stringify(data);
    this.fire(type, new MessageEvent(type, { data: text }));
  }

  /** The connection dropped and the browser will retry by itself. */
  drop() {
    this.readyState = FakeEventSource.CONNECTING;
    this.fire('error', new Event('error'));
  }

  /** The browser gave up (HTTP error status, wrong content type). */
  fail() {
    this.readyState = FakeEventSource.CLOSED;
    this.fire('error', new Event('error'));
  }

  private fire(type: string, event: Event) {
    for (const l of this.listeners.get(type) ?? []) l(event);
  }
}

export function installFakeEventSource() {
  FakeEventSource.reset();
  vi.stubGlobal('EventSource', FakeEventSource);
}

export function jsonResponse(status: number, body: unknown): Response {
  return new Response(typeof body === 'string' ? body : JSON.stringify(body), {
    status,
    headers: { 'Content-Type': 'application/json' },
  });
}

export type Route = (url: string, init?: RequestInit) => Response | Promise<Response>;

function urlOf(input: RequestInfo | URL): string {
  if (typeof input === 'string') return input;
  return input instanceof URL ? input.href : input.url;
}

/** Stubs fetch with a handler; returns the mock to inspect calls. */
export function stubFetch(route: Route) {
  const mock = vi.fn(async (input: RequestInfo | URL, init?: RequestInit) => route(urlOf(input), init));
  vi.stubGlobal('fetch', mock);
  return mock;
}
