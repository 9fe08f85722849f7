import type { LiveStatus } from '../live';

const TEXT: Record<LiveStatus, string> = {
  connecting: 'Connecting…',
  live: 'Live',
  reconnecting: 'Reconnecting…',
  unavailable: 'Live updates unavailable',
  offline: 'Cannot reach the server. Retrying…',
};

/** A small status pill: live, connecting, reconnecting, unavailable, or offline. */
export function LiveIndicator({ status }: { status: LiveStatus }) {
  return (
    <p className={`live-indicator live-${status}`} role="status" aria-live="polite" data-live-status={status}>
      <span className="live-dot" aria-hidden="true" />
      {TEXT[status]}
    </p>
  );
}
