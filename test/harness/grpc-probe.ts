/**
 * What every SPG99 server must answer: `grpc.health.v1.Health/Check` and server reflection's list of services
 * (what `grpcurl list` shows).
 */
import { createRequire } from 'node:module';
import { createChannel, createClient } from 'nice-grpc';
import { HealthDefinition } from 'nice-grpc-server-health';
import { HealthCheckResponse_ServingStatus } from 'nice-grpc-server-health/lib/proto/grpc/health/v1/health.js';
import type * as ReflectionGrpc from 'nice-grpc-server-reflection/lib/proto/grpc/reflection/v1/reflection_grpc_pb.js';
import type * as ReflectionPb from 'nice-grpc-server-reflection/lib/proto/grpc/reflection/v1/reflection_pb.js';

const require = createRequire(import.meta.url);
// The reflection package's generated CommonJS code, with the grpc-js copy it was built against.
const reflectionGrpc = require('nice-grpc-server-reflection/lib/proto/grpc/reflection/v1/reflection_grpc_pb.js') as typeof ReflectionGrpc;
const reflectionPb = require('nice-grpc-server-reflection/lib/proto/grpc/reflection/v1/reflection_pb.js') as typeof ReflectionPb;
const grpcJs = require(require.resolve('@grpc/grpc-js', { paths: [require.resolve('nice-grpc-server-reflection')] })) as typeof import('@grpc/grpc-js');

/** The overall serving status answered by `address`. */
export async function healthStatus(address: string): Promise<string> {
  const channel = createChannel(address);
  try {
    const client = createClient(HealthDefinition, channel);
    const answer = await client.check({ service: '' }, { signal: AbortSignal.timeout(5000) });
    return HealthCheckResponse_ServingStatus[answer.status];
  } finally {
    channel.close();
  }
}

/** The services `address` lists through server reflection (grpc.reflection.v1). */
export async function reflectedServices(address: string): Promise<string[]> {
  const client = new reflectionGrpc.ServerReflectionClient(address, grpcJs.credentials.createInsecure());
  try {
    return await new Promise<string[]>((resolve, reject) => {
      const call = client.serverReflectionInfo({ deadline: Date.now() + 5000 });
      call.on('data', (response: ReflectionPb.ServerReflectionResponse) => {
        const list = response.getListServicesResponse();
        if (list) resolve(list.getServiceList().map((service) => service.getName()));
        else reject(new Error(`unexpected reflection answer: ${JSON.stringify(response.toObject())}`));
        call.end();
      });
      call.on('error', reject);
      call.write(new reflectionPb.ServerReflectionRequest().setListServices('*'));
    });
  } finally {
    client.close();
  }
}
