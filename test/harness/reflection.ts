/**
 * Server reflection as `grpcurl list` uses it: the services a server lists (grpc.reflection.v1).
 */
import fs from 'node:fs';
import { ChannelCredentials } from '@grpc/grpc-js';
import { createChannel, createClient, Metadata } from 'nice-grpc';
import { currentProcessToken } from '../../src/lib/grpc/client.js';
import { CREDENTIAL_METADATA } from '../../src/lib/grpc/credentials.js';
import './credentials.js';
import { ServerReflectionService } from 'nice-grpc-server-reflection';
import reflectionMessages from 'nice-grpc-server-reflection/lib/proto/grpc/reflection/v1/reflection_pb.js';

/** The services `address` lists through server reflection (over TLS verified with `caFile` when given). */
export async function reflectedServices(address: string, caFile?: string): Promise<string[]> {
  const channel = createChannel(address, caFile ? ChannelCredentials.createSsl(fs.readFileSync(caFile)) : undefined);
  try {
    const reflection = createClient(ServerReflectionService, channel);
    const request = new reflectionMessages.ServerReflectionRequest();
    request.setListServices('*');
    async function* requests() {
      yield request;
    }
    const services: string[] = [];
    // Reflection needs a credential (the operator's, which the test process holds), as grpcurl needs -H.
    const metadata = Metadata({ [CREDENTIAL_METADATA]: currentProcessToken() ?? '' });
    for await (const response of reflection.serverReflectionInfo(requests(), { signal: AbortSignal.timeout(5000), metadata })) {
      const list = response.getListServicesResponse();
      if (!list) throw new Error(`${address} answered list_services with ${JSON.stringify(response.toObject())}`);
      services.push(...list.getServiceList().map((service) => service.getName()));
    }
    return services;
  } finally {
    channel.close();
  }
}
