/**
 * Waiting for the end of a foreground verb. SIGINT (Ctrl-C) and SIGTERM (systemd, `docker stop`)
 * both ask for a clean shutdown; a second signal while shutting down exits at once, as users of
 * long-running tools expect.
 */

/** Resolve with the signal's name on the first SIGINT or SIGTERM. */
export function waitForShutdownSignal(): Promise<NodeJS.Signals> {
  return new Promise((resolve) => {
    const on = (sig: NodeJS.Signals): void => {
      process.off('SIGINT', on);
      process.off('SIGTERM', on);
      // A second signal during a slow shutdown: leave now.
      const force = (): void => process.exit(130);
      process.once('SIGINT', force);
      process.once('SIGTERM', force);
      resolve(sig);
    };
    process.on('SIGINT', on);
    process.on('SIGTERM', on);
  });
}
