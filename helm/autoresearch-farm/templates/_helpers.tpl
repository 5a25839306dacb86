{{/* The chart name, overridable. */}}
{{- define "farm.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* The full name: release-chart, or the release alone when it already contains the chart name. */}}
{{- define "farm.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 40 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 40 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 40 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{/* chart-version, for the helm.sh/chart label. */}}
{{- define "farm.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Labels that select (stable across upgrades). */}}
{{- define "farm.selectorLabels" -}}
app.kubernetes.io/name: {{ include "farm.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{/* The standard labels of every resource; call with (dict "ctx" $ "component" "name"). */}}
{{- define "farm.labels" -}}
{{ include "farm.selectorLabels" .ctx }}
app.kubernetes.io/component: {{ .component }}
app.kubernetes.io/version: {{ .ctx.Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .ctx.Release.Service }}
helm.sh/chart: {{ include "farm.chart" .ctx }}
{{- with .ctx.Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{- define "farm.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "farm.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{- define "farm.cacheClaim" -}}
{{- default (printf "%s-cache" (include "farm.fullname" .)) .Values.cache.existingClaim }}
{{- end }}

{{/* The namespace of experiment Pods: their own by default, which holds no Secret and enforces PSA restricted. */}}
{{- define "farm.experimentNamespace" -}}
{{- default (printf "%s-experiments" .Release.Name) .Values.experiments.namespace | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* "true" when experiments run in a namespace of their own (not the release's, where the API key is). */}}
{{- define "farm.separateNamespace" -}}
{{- if ne (include "farm.experimentNamespace" .) .Release.Namespace }}true{{ end }}
{{- end }}

{{/* The ServiceAccount of experiment Pods: no RoleBinding, token never mounted. */}}
{{- define "farm.experimentServiceAccount" -}}
{{- default (printf "%s-experiment" (include "farm.fullname" .)) .Values.experiments.serviceAccount.name }}
{{- end }}

{{/* The cache PVC experiment Pods mount read-only: a PVC is namespaced, so another namespace needs its own
     claim on the same storage (cache.experimentsClaim); the chart cannot make one that shows the head's files. */}}
{{- define "farm.experimentCacheClaim" -}}
{{- if not (include "farm.separateNamespace" .) }}
{{- include "farm.cacheClaim" . }}
{{- else if .Values.cache.experimentsClaim }}
{{- .Values.cache.experimentsClaim }}
{{- else }}
{{- fail (printf "experiments run in their own namespace %s (experiments.namespace) and need the data cache there: set cache.experimentsClaim to a PVC in %s that shows the same files as the head's cache (e.g. a second PersistentVolume on the same NFS/CephFS/EFS share), or set experiments.namespace=%s to run them next to the farm (weaker: the driver may then create pods where the API key's Secret is)" (include "farm.experimentNamespace" .) (include "farm.experimentNamespace" .) .Release.Namespace) }}
{{- end }}
{{- end }}

{{/* The farm's own pods (Ray head, agent workers, the RayJob's submitter), as a NetworkPolicy peer. */}}
{{- define "farm.ownPodsSelector" -}}
matchLabels:
  {{- include "farm.selectorLabels" . | nindent 2 }}
matchExpressions:
  - key: app.kubernetes.io/component
    operator: In
    values: ["ray-head", "ray-agents", "submitter"]
{{- end }}

{{- define "farm.apiKeySecret" -}}
{{- if .Values.apiKey.existingSecret }}
{{- .Values.apiKey.existingSecret }}
{{- else if .Values.apiKey.value }}
{{- printf "%s-api-key" (include "farm.fullname" .) }}
{{- end }}
{{- end }}

{{- define "farm.image" -}}
{{- printf "%s:%s" .Values.image.repository .Values.image.tag }}
{{- end }}

{{- define "farm.trainerImage" -}}
{{- printf "%s:%s" .Values.trainerImage.repository .Values.trainerImage.tag }}
{{- end }}

{{/* Where the run directory lives on the head. */}}
{{- define "farm.runDir" -}}
{{- printf "/farm/runs/%s" (include "farm.fullname" .) }}
{{- end }}

{{/* The API key as a read-only file: volume and mount (head and agent workers only). */}}
{{- define "farm.apiKeyVolume" -}}
{{- if include "farm.apiKeySecret" . }}
- name: api-key
  secret:
    secretName: {{ include "farm.apiKeySecret" . }}
    defaultMode: 0400
    items:
      - key: {{ .Values.apiKey.secretKey }}
        path: api-key
{{- end }}
{{- end }}

{{- define "farm.apiKeyMount" -}}
{{- if include "farm.apiKeySecret" . }}
- name: api-key
  mountPath: /var/run/secrets/autoresearch-farm
  readOnly: true
{{- end }}
{{- end }}

{{- define "farm.apiKeyEnv" -}}
{{- if include "farm.apiKeySecret" . }}
- name: ANTHROPIC_API_KEY_FILE
  value: /var/run/secrets/autoresearch-farm/api-key
{{- end }}
{{- end }}

{{/* The container security context of the farm's own pods (Ray needs a writable root for its session dirs). */}}
{{- define "farm.securityContext" -}}
runAsNonRoot: true
runAsUser: 65534
runAsGroup: 65534
allowPrivilegeEscalation: false
capabilities:
  drop: ["ALL"]
seccompProfile:
  type: RuntimeDefault
{{- end }}

{{/* The ConfigMap that holds the farm's farm.yaml (farm-config.yaml), and where the Ray head mounts it. */}}
{{- define "farm.configMap" -}}
{{- printf "%s-config" (include "farm.fullname" .) }}
{{- end }}

{{- define "farm.configDir" -}}
/farm/config
{{- end }}

{{- define "farm.configPath" -}}
{{- printf "%s/farm.yaml" (include "farm.configDir" .) }}
{{- end }}

{{/* The environment of the Ray head. The farm's settings are not here but in its farm.yaml (farm-config.yaml):
     FARM_CACHE is read outside FarmConfig (trainer.profiles.cache_dir: `farm prepare`, `farm doctor` on the head). */}}
{{- define "farm.env" -}}
- name: FARM_CACHE
  value: /cache
{{- end }}
