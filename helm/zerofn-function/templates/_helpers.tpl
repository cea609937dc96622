{{- define "zerofn.name" -}}
{{- required "function.name is required (zerofn values generates it)" .Values.function.name -}}
{{- end -}}

{{- define "zerofn.selectorLabels" -}}
app.kubernetes.io/name: {{ include "zerofn.name" . }}
app.kubernetes.io/component: function
{{- end -}}

{{- define "zerofn.labels" -}}
{{ include "zerofn.selectorLabels" . }}
app.kubernetes.io/part-of: zerofn
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/version: {{ .Values.image.tag | quote }}
helm.sh/chart: {{ .Chart.Name }}-{{ .Chart.Version }}
{{- end -}}

{{- define "zerofn.image" -}}
{{ required "image.repository is required" .Values.image.repository }}:{{ required "image.tag is required" .Values.image.tag }}
{{- end -}}

{{- define "zerofn.podSecurityContext" -}}
runAsNonRoot: true
runAsUser: 65532
runAsGroup: 65532
fsGroup: 65532
seccompProfile:
  type: RuntimeDefault
{{- end -}}

{{- define "zerofn.containerSecurityContext" -}}
runAsNonRoot: true
runAsUser: 65532
allowPrivilegeEscalation: false
readOnlyRootFilesystem: true
capabilities:
  drop: ["ALL"]
seccompProfile:
  type: RuntimeDefault
{{- end -}}

{{/* The runtime's environment: plain values, then secret references, then what the chart fixes. */}}
{{- define "zerofn.env" -}}
{{- range $k, $v := .Values.env }}
- name: {{ $k }}
  value: {{ $v | toString | quote }}
{{- end }}
{{- range $k, $ref := .Values.secretEnv }}
- name: {{ $k }}
  valueFrom:
    secretKeyRef:
      name: {{ $ref.name }}
      key: {{ $ref.key }}
{{- end }}
{{- range $k, $v := .Values.settings }}
- name: {{ $k }}
  value: {{ $v | toString | quote }}
{{- end }}
{{- range $k, $ref := .Values.secretSettings }}
- name: {{ $k }}
  valueFrom:
    secretKeyRef:
      name: {{ $ref.name }}
      key: {{ $ref.key }}
{{- end }}
{{- include "zerofn.storeEnv" . }}
{{- if not (hasKey .Values.env "ZEROFN_GATEWAY_URL") }}
- name: ZEROFN_GATEWAY_URL
  value: {{ printf "http://zerofn-gateway.%s.svc.cluster.local" .Values.networkPolicy.gatewayNamespace | quote }}
{{- end }}
- name: ZEROFN_DATA_DIR
  value: /tmp/zerofn
{{- end -}}

{{- define "zerofn.probes" -}}
livenessProbe:
  httpGet: { path: /healthz, port: http }
  periodSeconds: 10
  failureThreshold: 3
readinessProbe:
  httpGet: { path: /readyz, port: http }
  periodSeconds: 2
  failureThreshold: 2
startupProbe:
  httpGet: { path: /healthz, port: http }
  periodSeconds: 1
  failureThreshold: 30
{{- end -}}

{{/* The shared store of an event function or of one with [store] sql = true: from the platform's Secret,
unless set explicitly or a demo. */}}
{{- define "zerofn.storeEnv" -}}
{{- if and (or (has .Values.function.kind (list "events" "scheduled")) .Values.function.sql) (not (hasKey .Values.env "ZEROFN_STORE")) (not (hasKey .Values.secretEnv "ZEROFN_STORE")) }}
{{- if .Values.store.ephemeralForDemoOnly }}
- name: ZEROFN_ALLOW_EPHEMERAL_STORE
  value: "true"
{{- else }}
- name: ZEROFN_STORE
  valueFrom:
    secretKeyRef:
      name: {{ required "store.secretName is required for an event function or one with [store] sql = true: the Secret holding the shared PostgreSQL URL (the platform chart's store.cloudnativepg creates zerofn-store-app, key uri; with store.external use that Secret's name and key). Or set secretEnv.ZEROFN_STORE, or store.ephemeralForDemoOnly=true for a demo that may apply events twice" .Values.store.secretName }}
      key: {{ required "store.key is required: the key of store.secretName that holds the URL" .Values.store.key }}
{{- end }}
{{- end }}
{{- end -}}

{{/* The Dapr sidecar: an event function's intake and publishing, an HTTP function's publishing. */}}
{{- define "zerofn.daprAnnotations" -}}
dapr.io/enabled: "true"
dapr.io/app-id: {{ include "zerofn.name" . | quote }}
dapr.io/app-port: {{ .Values.dapr.appPort | quote }}
dapr.io/app-protocol: "http"
dapr.io/api-token-secret: {{ .Values.dapr.apiTokenSecret | quote }}
dapr.io/app-token-secret: {{ .Values.dapr.appTokenSecret | quote }}
dapr.io/graceful-shutdown-seconds: {{ .Values.dapr.gracefulShutdownSeconds | quote }}
dapr.io/enable-metrics: "true"
dapr.io/sidecar-cpu-request: {{ .Values.dapr.sidecar.cpuRequest | quote }}
dapr.io/sidecar-memory-request: {{ .Values.dapr.sidecar.memoryRequest | quote }}
dapr.io/sidecar-cpu-limit: {{ .Values.dapr.sidecar.cpuLimit | quote }}
dapr.io/sidecar-memory-limit: {{ .Values.dapr.sidecar.memoryLimit | quote }}
{{- end -}}


{{/* The brokers KEDA reads the lag from: the platform's Kafka, by its full name, unless overridden. */}}
{{- define "zerofn.kafkaBootstrap" -}}
{{- $k := .Values.kafka -}}
{{- $k.bootstrapServers | default (printf "%s-kafka-bootstrap.%s.svc:%d" $k.cluster .Release.Namespace (ternary 9092 9093 (eq $k.insecurePlaintextDevOnly true))) -}}
{{- end -}}
