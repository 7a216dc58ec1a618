// CLIPAG_WEBHOOK_PORTS (ADR 0013): the ports a webhook URL may name in AWS, parsed once, and the
// sender built from the config refusing the others before any lookup or connection.
import { describe, expect, it } from 'vitest';
import { parseConfig, type AwsConfig } from '../../shared/config.ts';
import { webhookDeliveryFromConfig } from '../../shared/webhooks.ts';

const AWS = { CLIPAG_MODE: 'aws', AWS_REGION: 'eu-west-1', CLIPAG_BUCKET: 'clipag-test-outputs', CLIPAG_QUEUE_URL: 'https://sqs.eu-west-1.amazonaws.com/123456789012/jobs' };
const aws = (env: Record<string, string> = {}) => parseConfig({ ...AWS, ...env }) as AwsConfig;

describe('CLIPAG_WEBHOOK_PORTS', () => {
  it('defaults to 443; takes a list of ports (spaces and repeats allowed); anything else is a config error naming it', () => {
    expect(aws().webhookPorts).toEqual([443]);
    expect(aws({ CLIPAG_WEBHOOK_PORTS: '443, 8443,443' }).webhookPorts).toEqual([443, 8443]);
    expect(aws({ CLIPAG_WEBHOOK_PORTS: ' 8443 ' }).webhookPorts).toEqual([8443]);
    for (const [bad, why] of [
      ['0', /CLIPAG_WEBHOOK_PORTS: every port must be 1-65535 \(got "0"\)/],
      ['443,65536', /CLIPAG_WEBHOOK_PORTS: every port must be 1-65535/],
      ['https', /CLIPAG_WEBHOOK_PORTS: must be ports separated by commas, such as 443,8443/],
      ['443,', /CLIPAG_WEBHOOK_PORTS: must be ports separated by commas/],
      ['443;8443', /CLIPAG_WEBHOOK_PORTS: must be ports separated by commas/],
    ] as const) {
      expect(() => aws({ CLIPAG_WEBHOOK_PORTS: bad }), bad).toThrow(why);
    }
  });

  it('reaches the sender: a port not listed is refused before any lookup; local mode on a public address has the same list', async () => {
    const attempt = (config: Parameters<typeof webhookDeliveryFromConfig>[0], url: string) => webhookDeliveryFromConfig(config).send({ url, headers: {}, body: '{}' });
    await expect(attempt(aws(), 'https://hooks.example.com:8443/x')).rejects.toThrow(/port 8443 is not allowed here: webhooks go to port 443 only/);
    await expect(attempt(aws({ CLIPAG_WEBHOOK_PORTS: '8443' }), 'https://hooks.example.com/x')).rejects.toThrow(/port 443 is not allowed here: webhooks go to port 8443 only$/);
    // Local mode: the list binds only where private addresses are refused (a public host); on loopback any port.
    expect(parseConfig({})).toMatchObject({ mode: 'local', webhookAllowPrivate: true, webhookPorts: [443] });
    const publicLocal = parseConfig({ CLIPAG_HOST: '0.0.0.0', CLIPAG_WEBHOOK_PORTS: '443,8443' });
    expect(publicLocal).toMatchObject({ webhookAllowPrivate: false, webhookPorts: [443, 8443] });
    await expect(attempt(publicLocal as Parameters<typeof webhookDeliveryFromConfig>[0], 'https://hooks.example.com:9443/x')).rejects.toThrow(/port 9443 is not allowed here: webhooks go to port 443 or 8443 only/);
  });
});
